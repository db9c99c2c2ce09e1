//! Validation of the analysis settings (window, errors, goals), the guard (`rollout.guard`), and
//! the fleet's store (`state.etcd`).

use std::time::Duration;

use super::checker::{Checker, at};
use super::error::Reason;
use super::file::{AnalysisFile, EtcdFile, GuardFile};
use super::{Analysis, Fleet, Goal, Guard, GuardAction, MAX_GOALS, StatusSet};

pub(super) fn analysis(c: &mut Checker, a: Option<&AnalysisFile>) -> Analysis {
    let window = a
        .and_then(|a| a.window.as_ref())
        .and_then(|w| {
            c.check(w, "analysis.window", |text| {
                let d = super::parse_duration(text)?;
                if !(Duration::from_secs(10)..=Duration::from_secs(86_400)).contains(&d) {
                    Err(Reason::DurationRange {
                        min: "10s",
                        max: "24h",
                        got: text.clone(),
                    })
                } else if d.subsec_nanos() != 0 {
                    Err(Reason::WholeSeconds(text.clone()))
                } else {
                    Ok(d)
                }
            })
        })
        .unwrap_or(Duration::from_secs(600));
    let error_statuses = a
        .and_then(|a| a.error_statuses.as_ref())
        .and_then(|list| {
            c.check(list, "analysis.error_statuses", |l| {
                StatusSet::parse(&l.iter().map(String::as_str).collect::<Vec<_>>())
            })
        })
        .unwrap_or_else(|| StatusSet::parse(&["5xx"]).unwrap_or_default());
    let mut goals = Vec::new();
    if let Some(list) = a.and_then(|a| a.goals.as_ref()) {
        if list.value.len() > MAX_GOALS {
            c.fail(
                at(list),
                "analysis.goals",
                Reason::OutOfRange {
                    min: 0.0,
                    max: MAX_GOALS as f64,
                    got: list.value.len() as f64,
                },
            );
        }
        for (i, g) in list.value.iter().enumerate().take(MAX_GOALS) {
            let field = |f: &str| format!("analysis.goals[{i}].{f}");
            let name = c.check(&g.name, &field("name"), |n| {
                let n = n.trim();
                if n.is_empty() {
                    Err(Reason::Empty)
                } else if n.len() > 64 || !n.bytes().all(|b| b.is_ascii_graphic()) {
                    Err(Reason::GoalName(n.to_owned()))
                } else {
                    Ok(n.to_owned())
                }
            });
            let method = match &g.method {
                Some(m) => c
                    .check(m, &field("method"), |m| {
                        match http::Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()) {
                            Ok(m) if m == http::Method::TRACE || m == http::Method::CONNECT => {
                                Err(Reason::NeverCounted(m.to_string()))
                            }
                            Ok(m) => Ok(m),
                            Err(_) => Err(Reason::Method(m.clone())),
                        }
                    })
                    .map(Some),
                None => Some(None),
            };
            let path = c.check(&g.path, &field("path"), |p| {
                if p.starts_with('/') && !p.contains(['?', '#']) {
                    Ok(p.clone())
                } else {
                    Err(Reason::GoalPath(p.clone()))
                }
            });
            let status = match &g.status {
                Some(s) => c.check(s, &field("status"), |s| StatusSet::parse(&[s.as_str()])),
                None => StatusSet::parse(&["2xx"]).ok(),
            };
            if let (Some(name), Some(method), Some(path), Some(status)) =
                (name, method, path, status)
            {
                if goals.iter().any(|g: &Goal| g.name == name) {
                    c.fail(at(&g.name), &field("name"), Reason::DuplicateGoal(name));
                    continue;
                }
                goals.push(Goal {
                    name,
                    method,
                    path,
                    status,
                });
            }
        }
    }
    Analysis {
        window,
        error_statuses,
        goals,
    }
}

pub(super) fn guard(c: &mut Checker, g: Option<&GuardFile>) -> Option<Guard> {
    let g = g?;
    let fraction =
        |c: &mut Checker, v: &Option<super::file::S<f64>>, field, min: f64, max: f64, default| {
            v.as_ref()
                .and_then(|v| {
                    c.check(v, field, |&x| {
                        if x.is_finite() && (min..=max).contains(&x) {
                            Ok(x)
                        } else {
                            Err(Reason::OutOfRange { min, max, got: x })
                        }
                    })
                })
                .unwrap_or(default)
        };
    // A fraction, where `percent` is a percent: `1` meant as one point is 100 points, which no
    // canary exceeds (its guard would never act on errors).
    let max_error_rate_increase = g
        .max_error_rate_increase
        .as_ref()
        .and_then(|v| {
            c.check(v, "rollout.guard.max_error_rate_increase", |&x| match x {
                x if x.is_finite() && (0.0..1.0).contains(&x) => Ok(x),
                x if x >= 1.0 => Err(Reason::NotAFraction(x)),
                x => Err(Reason::OutOfRange {
                    min: 0.0,
                    max: 1.0,
                    got: x,
                }),
            })
        })
        .unwrap_or(0.01);
    let max_p99_ratio = fraction(
        c,
        &g.max_p99_ratio,
        "rollout.guard.max_p99_ratio",
        1.0,
        100.0,
        1.5,
    );
    let min_p99_increase = g
        .min_p99_increase
        .as_ref()
        .and_then(|s| {
            c.check(s, "rollout.guard.min_p99_increase", |t| {
                super::checker::parse_duration_or_zero(t)
            })
        })
        .unwrap_or_default();
    let min_requests = c.int(
        g.min_requests.as_ref(),
        "rollout.guard.min_requests",
        30,
        100_000_000,
        300,
    );
    let min_users = c.int(
        g.min_users.as_ref(),
        "rollout.guard.min_users",
        1,
        crate::analysis::ERROR_USERS as u64,
        5,
    );
    let action = match &g.action {
        Some(a) => c
            .check(a, "rollout.guard.action", |a| match a.trim() {
                "halt" => Ok(GuardAction::Halt),
                "rollback" => Ok(GuardAction::Rollback),
                other => Err(Reason::OneOf("halt, rollback", other.to_owned())),
            })
            .unwrap_or(GuardAction::Rollback),
        None => GuardAction::Rollback,
    };
    Some(Guard {
        max_error_rate_increase,
        max_p99_ratio,
        min_p99_increase,
        min_requests,
        min_users,
        action,
        require_data: g.require_data.unwrap_or(false),
    })
}

pub(super) fn fleet(c: &mut Checker, e: &EtcdFile) -> Option<Fleet> {
    if e.endpoints.value.is_empty() {
        c.fail(at(&e.endpoints), "state.etcd.endpoints", Reason::Empty);
    }
    let endpoints: Vec<String> = e
        .endpoints
        .value
        .iter()
        .filter_map(|u| {
            c.check(u, "state.etcd.endpoints", |u| {
                let u = u.trim().trim_end_matches('/');
                let bad = || Reason::EtcdEndpoint(u.to_owned());
                let rest = u
                    .strip_prefix("http://")
                    .or_else(|| u.strip_prefix("https://"))
                    .ok_or_else(bad)?;
                super::upstream_addr(rest).map_err(|_| bad())?;
                Ok(u.to_owned())
            })
        })
        .collect();
    let key = c.check(&e.key, "state.etcd.key", |k| {
        if k.starts_with('/') && k.len() > 1 && !k.chars().any(char::is_whitespace) {
            Ok(k.clone())
        } else {
            Err(Reason::AbsolutePath(k.clone()))
        }
    });
    let text = |c: &mut Checker, v: &Option<super::file::S<String>>, field| {
        v.as_ref().and_then(|v| {
            c.check(v, field, |s| {
                if s.trim().is_empty() {
                    Err(Reason::Empty)
                } else if s.chars().any(char::is_control) {
                    // Shown in every instance's logs and status (the instance's name too).
                    Err(Reason::Control(s.to_owned()))
                } else {
                    Ok(s.trim().to_owned())
                }
            })
        })
    };
    let username = text(c, &e.username, "state.etcd.username");
    let password_file = text(c, &e.password_file, "state.etcd.password_file").map(Into::into);
    let ca = text(c, &e.ca, "state.etcd.ca").map(Into::into);
    let instance = text(c, &e.instance, "state.etcd.instance");
    if username.is_some() != password_file.is_some() {
        c.fail(
            at(&e.key),
            "state.etcd.username and password_file",
            Reason::BothOrNeither,
        );
    }
    (endpoints.len() == e.endpoints.value.len() && !endpoints.is_empty()).then_some(Fleet {
        endpoints,
        key: key?,
        username,
        password_file,
        ca,
        instance,
    })
}
