//! The deployment files agree with ramp and with each other: every config they carry loads,
//! every metric the Grafana dashboard and the Prometheus config name exists in ramp's /metrics,
//! and the Dockerfile's paths and ports are the ones the compose file, the configs and the
//! Kubernetes manifests use. (CI also validates the compose file with `docker-compose config`,
//! the manifests with kubernetes-validate, the Dockerfile with hadolint and the systemd unit
//! with `systemd-analyze verify`.)

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;
use support::{Backend, Client, Proxy};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The port of `host:port` or `host_port:container_port`.
fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port")
}

/// The configs the deployment files carry, loaded by ramp itself.
fn configs() -> Vec<(String, ramp::config::Config)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut out = Vec::new();
    for path in [
        "deploy/docker/ramp.yaml",
        "deploy/compose/ramp-a/ramp.yaml",
        "deploy/compose/ramp-b/ramp.yaml",
    ] {
        let c = ramp::config::load(&root().join(path)).unwrap_or_else(|e| panic!("{path}:\n{e}"));
        out.push((path.to_owned(), c));
    }
    let configmap = yaml("deploy/kubernetes/configmap.yaml");
    let text = configmap["data"]["ramp.yaml"]
        .as_str()
        .expect("ramp.yaml in the ConfigMap");
    let p = dir.path().join("ramp.yaml");
    std::fs::write(&p, text).expect("write");
    let c = ramp::config::load(&p).unwrap_or_else(|e| panic!("the ConfigMap's ramp.yaml:\n{e}"));
    out.push(("deploy/kubernetes/configmap.yaml".into(), c));
    out
}

#[test]
fn the_dockerfile_compose_file_configs_and_manifests_agree() {
    let dockerfile = read("Dockerfile");
    let exposed: BTreeSet<u16> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace().filter_map(|p| p.parse().ok()))
        .collect();
    assert_eq!(exposed, BTreeSet::from([8080, 9100]), "{dockerfile}");
    for needle in [
        "\"/etc/ramp/ramp.yaml\"",
        "VOLUME [\"/var/lib/ramp\"]",
        "http://127.0.0.1:9100/healthz",
        "COPY deploy/docker/ramp.yaml /etc/ramp/ramp.yaml",
    ] {
        assert!(dockerfile.contains(needle), "the Dockerfile lacks {needle}");
    }
    for (path, c) in configs() {
        assert!(
            exposed.contains(&c.listen.port()),
            "{path}: listen {}",
            c.listen
        );
        let metrics = c
            .metrics
            .as_ref()
            .map(|m| m.listen)
            .unwrap_or_else(|| panic!("{path}: no metrics listener"));
        assert!(
            exposed.contains(&metrics.port()),
            "{path}: metrics {metrics}"
        );
        let state = c
            .state_file
            .unwrap_or_else(|| panic!("{path}: no state file"));
        assert!(
            state.starts_with("/var/lib/ramp"),
            "{path}: {}",
            state.display()
        );
        let socket = c
            .admin
            .unwrap_or_else(|| panic!("{path}: no admin socket"))
            .socket;
        assert!(
            socket.starts_with("/run/ramp"),
            "{path}: {}",
            socket.display()
        );
    }
    // compose: every ramp service mounts a config directory at /etc/ramp and publishes the
    // image's ports; the configs it mounts exist.
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_object().expect("services");
    let ramps: Vec<_> = services
        .iter()
        .filter(|(n, _)| n.starts_with("ramp-"))
        .collect();
    assert_eq!(ramps.len(), 2, "a fleet of two");
    for (name, svc) in ramps {
        let volumes: Vec<&str> = svc["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let config = volumes
            .iter()
            .find(|v| v.contains(":/etc/ramp"))
            .unwrap_or_else(|| panic!("{name}: no config mount"));
        let host = config.split(':').next().expect("host path");
        assert!(
            root().join(host).join("ramp.yaml").is_file(),
            "{name}: {host}/ramp.yaml"
        );
        assert!(
            volumes.iter().any(|v| v.ends_with(":/var/lib/ramp")),
            "{name}: state volume"
        );
        let published: BTreeSet<u16> = svc["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .filter_map(Value::as_str)
            .map(port_of)
            .collect();
        assert_eq!(published, exposed, "{name}");
        // Docker's own wait after SIGTERM (10 s) would cut a drain short.
        let c = ramp::config::load(&root().join(host).join("ramp.yaml")).expect("config");
        let grace = svc["stop_grace_period"].as_str().unwrap_or("10s");
        let grace: u64 = grace.trim_end_matches('s').parse().expect("seconds");
        assert!(grace > c.shutdown_grace.as_secs(), "{name}: {grace}s");
    }
    // A demo backend runs the image, whose health check asks ramp's metrics listener: the
    // service checks its own port instead, or Docker calls it unhealthy.
    for (name, svc) in services {
        let command: Vec<&str> = svc["command"]
            .as_array()
            .map(|c| c.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if command.first() != Some(&"demo-upstream") {
            continue;
        }
        let listen = command.last().expect("--listen");
        let test = svc["healthcheck"]["test"].to_string();
        assert!(
            test.contains(&format!("127.0.0.1:{}", port_of(listen))),
            "{name}: {test}"
        );
    }
    // The fleet's instances share the key, and etcd is a service of the file.
    let a = ramp::config::load(&root().join("deploy/compose/ramp-a/ramp.yaml")).expect("a");
    let b = ramp::config::load(&root().join("deploy/compose/ramp-b/ramp.yaml")).expect("b");
    let (fa, fb) = (a.fleet.expect("fleet a"), b.fleet.expect("fleet b"));
    assert_eq!(fa.key, fb.key);
    assert_ne!(fa.instance, fb.instance);
    assert!(services.contains_key("etcd"));
    assert!(
        fa.endpoints.iter().all(|e| e.contains("//etcd:")),
        "{:?}",
        fa.endpoints
    );
    // Kubernetes: probes hit /readyz and /healthz on the metrics port; the config is mounted as a
    // directory (never subPath); the grace covers shutdown_grace.
    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    let spec = &deployment["spec"]["template"]["spec"];
    let container = &spec["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    let ports: BTreeSet<u16> = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p["containerPort"].as_u64().map(|p| p as u16))
        .collect();
    assert_eq!(ports, exposed);
    let mounts = container["volumeMounts"].as_array().expect("mounts");
    assert!(
        mounts.iter().all(|m| m.get("subPath").is_none()),
        "no subPath"
    );
    assert!(mounts.iter().any(|m| m["mountPath"] == "/etc/ramp"));
    assert!(deployment["spec"]["replicas"].as_u64().expect("replicas") >= 2);
    let grace = spec["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace");
    let (_, k8s) = configs().pop().expect("configmap");
    assert!(grace > k8s.shutdown_grace.as_secs(), "{grace}s");
}

/// Metric names (`ramp_...`) in a text, with histogram suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("ramp_") {
        let start = i + at;
        let end = bytes[start..]
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
            .map_or(bytes.len(), |n| start + n);
        let name = &text[start..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.insert(base.to_owned());
        i = end;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_prometheus_name_exists() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&format!(
        "listen: 127.0.0.1:0\nworkers: 1\nsticky: {{header: x-user-id}}\npools: {{stable: ['{}'], canary: ['{}']}}\nrollout: {{id: m, percent: 50, guard: {{action: halt}}}}\nanalysis: {{goals: [{{name: purchase, path: /checkout/done}}]}}\nmetrics: {{listen: '127.0.0.1:0'}}\n",
        s.addr, c.addr
    ));
    let client = Client::http1();
    for i in 0..40 {
        client
            .get(
                &proxy.url("/checkout/done"),
                &[("x-user-id", &format!("u{i}"))],
            )
            .await;
    }
    // Once the analysis has had a second, every series is there.
    let mut names = BTreeSet::new();
    let mut text = String::new();
    for _ in 0..100 {
        text = proxy.metrics().await;
        names = metric_names(&text);
        if names.contains("ramp_goal_total") && names.contains("ramp_users") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Each says what it is (`promtool check metrics` wants a HELP line for every series).
    for typed in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = typed.split(' ').next().unwrap_or_default();
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP line"
        );
    }
    let dashboard = read("deploy/compose/grafana/dashboards/ramp.json");
    let _: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let wanted = metric_names(&dashboard);
    assert!(wanted.len() >= 8, "{wanted:?}");
    for name in &wanted {
        assert!(
            names.contains(name),
            "the dashboard uses {name}, which /metrics lacks: {names:?}"
        );
    }
    let prometheus = yaml("deploy/compose/prometheus.yml");
    assert_eq!(prometheus["scrape_configs"][0]["metrics_path"], "/metrics");
    for name in metric_names(&read("deploy/compose/prometheus.yml")) {
        assert!(names.contains(&name), "{name}");
    }
}
