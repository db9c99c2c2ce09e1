#!/bin/sh
# Restarts ramp without losing a request: start the idle instance of ramp@.service, wait until
# it owns the admin socket (it is listening), then stop the running one. Run as root.
set -eu
config=${RAMP_CONFIG:-/etc/ramp/ramp.yaml}
if systemctl is-active --quiet ramp@a; then old=a new=b; else old=b new=a; fi
systemctl start "ramp@$new"
pid=$(systemctl show -p MainPID --value "ramp@$new")
for _ in $(seq 1 150); do
  if ramp ctl --config "$config" --json status 2>/dev/null | grep -q "\"pid\":${pid}[,}]"; then
    systemctl stop "ramp@$old"
    echo "ramp@$new serves; ramp@$old stopped"
    exit 0
  fi
  sleep 0.2
done
echo "ramp@$new did not take over within 30 s; ramp@$old keeps serving" >&2
systemctl stop "ramp@$new"
exit 1
