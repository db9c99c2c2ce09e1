//! Every unknown key of a file, each with its position. serde would stop at the first unknown
//! field, and `ramp check` promises every problem, so the file is also walked as a plain tree of
//! keys and each section's keys are compared with the fields its type accepts (read from the type
//! itself, so the list cannot drift from it). The typed parse ignores unknown keys; this reports
//! them, beside every other problem.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::checker::at;
use super::error::{Position, Problem, Reason};
use super::file::{
    AdminFile, AnalysisFile, EtcdFile, File, GoalFile, GuardFile, HealthFile, LimitsFile,
    MetricsFile, PassiveFile, PoolsFile, RolloutFile, S, StateFile, StepFile, StickyFile, TlsFile,
    UpstreamFile,
};

/// The keys of a YAML document, with the positions of keys and values; other values are dropped.
enum Node {
    Map(Vec<(S<String>, S<Node>)>),
    Seq(Vec<S<Node>>),
    Leaf,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

macro_rules! leaf {
    ($($name:ident: $ty:ty),*) => {
        $(fn $name<E: de::Error>(self, _: $ty) -> Result<Node, E> { Ok(Node::Leaf) })*
    };
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML value")
    }

    leaf!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str,
          visit_i128: i128, visit_u128: u128, visit_bytes: &[u8]);

    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<S<String>>()? {
            entries.push((key, map.next_value::<S<Node>>()?));
        }
        Ok(Node::Map(entries))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<S<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
}

/// The field names a derived `Deserialize` struct accepts.
fn fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Grab<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Grab<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields read"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut out: &'static [&'static str] = &[];
    let _ = T::deserialize(Grab(&mut out));
    out
}

/// The sections of the file and the fields each accepts; `[]` marks the items of a list.
fn schema() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("", fields::<File>()),
        ("sticky", fields::<StickyFile>()),
        ("pools", fields::<PoolsFile>()),
        ("rollout", fields::<RolloutFile>()),
        ("rollout.steps[]", fields::<StepFile>()),
        ("rollout.guard", fields::<GuardFile>()),
        ("analysis", fields::<AnalysisFile>()),
        ("analysis.goals[]", fields::<GoalFile>()),
        ("upstream", fields::<UpstreamFile>()),
        ("admin", fields::<AdminFile>()),
        ("state", fields::<StateFile>()),
        ("state.etcd", fields::<EtcdFile>()),
        ("tls", fields::<TlsFile>()),
        ("health", fields::<HealthFile>()),
        ("passive_health", fields::<PassiveFile>()),
        ("limits", fields::<LimitsFile>()),
        ("metrics", fields::<MetricsFile>()),
    ]
}

/// Every key of `text` that its section does not accept; empty when the keys are all known (or
/// the text is not YAML at all).
pub fn unknown(text: &str) -> Vec<Problem> {
    // Duplicate keys are the typed parse's to report; here they must not hide the rest.
    let options = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::LastWins,
    };
    let Ok(root) = serde_saphyr::from_str_with_options::<Node>(text, options) else {
        return Vec::new();
    };
    let schema = schema();
    let mut out = Vec::new();
    walk(&root, "", &schema, &mut out);
    out
}

/// Where a key or a value of the file begins, and the setting it is (`rollout.steps[].hold`, a
/// list's item `rollout.steps[]`).
struct Place {
    at: Position,
    path: String,
    key: bool,
}

/// The setting at `at`: the innermost key or value that begins at or before it (of several
/// beginning there, the outermost: an alias's keys all begin at the alias). With `key_only`, the
/// last key that begins at or before it. `None` if `text` is not YAML or nothing begins before.
pub fn field_at(text: &str, at: Position, key_only: bool) -> Option<String> {
    let options = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::LastWins,
    };
    let root = serde_saphyr::from_str_with_options::<Node>(text, options).ok()?;
    let mut places = Vec::new();
    every_place(&root, "", &mut places);
    places
        .into_iter()
        .filter(|p| (!key_only || p.key) && (p.at.line, p.at.column) <= (at.line, at.column))
        .max_by_key(|p| {
            (
                p.at.line,
                p.at.column,
                if key_only {
                    p.path.len()
                } else {
                    usize::MAX - p.path.len()
                },
            )
        })
        .map(|p| p.path)
}

/// The path of `key` in the section at `path` (`""`: the top).
fn child(path: &str, key: &str) -> String {
    match path {
        "" => key.to_owned(),
        p => format!("{p}.{key}"),
    }
}

fn every_place(node: &Node, path: &str, out: &mut Vec<Place>) {
    match node {
        Node::Map(entries) => {
            for (key, value) in entries {
                let full = child(path, &key.value);
                out.push(Place {
                    at: at(key),
                    path: full.clone(),
                    key: true,
                });
                out.push(Place {
                    at: at(value),
                    path: full.clone(),
                    key: false,
                });
                every_place(&value.value, &full, out);
            }
        }
        Node::Seq(items) => {
            let inner = format!("{path}[]");
            for item in items {
                out.push(Place {
                    at: at(item),
                    path: inner.clone(),
                    key: false,
                });
                every_place(&item.value, &inner, out);
            }
        }
        Node::Leaf => {}
    }
}

fn walk(node: &Node, path: &str, schema: &[(&str, &[&str])], out: &mut Vec<Problem>) {
    let known = schema.iter().find(|(p, _)| *p == path).map(|(_, f)| *f);
    match node {
        Node::Map(entries) => {
            let Some(known) = known else { return };
            for (key, value) in entries {
                let full = child(path, &key.value);
                if known.contains(&key.value.as_str()) {
                    walk(&value.value, &full, schema, out);
                } else {
                    out.push(Problem {
                        at: at(key),
                        field: full,
                        reason: Reason::UnknownKey(known.join(", ")),
                    });
                }
            }
        }
        Node::Seq(items) => {
            let inner = format!("{path}[]");
            for item in items {
                walk(&item.value, &inner, schema, out);
            }
        }
        Node::Leaf => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_section_has_its_keys_checked() {
        let text = "x1: 1\nsticky: {x2: 1}\npools: {x3: 1}\nrollout: {x4: 1, steps: [{x5: 1}], guard: {x6: 1}}\nupstream: {x7: 1}\nadmin: {x8: 1}\nstate: {x9: 1, etcd: {x17: 1}}\ntls: {x10: 1}\nhealth: {x11: 1}\npassive_health: {x12: 1}\nlimits: {x13: 1}\nmetrics: {x14: 1}\nanalysis: {x15: 1, goals: [{x16: 1}]}\n";
        let found: Vec<String> = unknown(text).into_iter().map(|p| p.field).collect();
        for i in 1..=17 {
            assert!(
                found.iter().any(|f| f.ends_with(&format!("x{i}"))),
                "x{i} not reported: {found:?}"
            );
        }
    }

    #[test]
    fn every_unknown_key_is_found_with_its_position() {
        let text = "listen: 127.0.0.1:0\nlisten_port: 8\npools:\n  stable: [a:1]\n  canary: [b:1]\n  extra: 1\nrollout:\n  id: r\n  steps:\n    - {percent: 1, hold: 1m, wait: 2}\nlimits:\n  idle_timeout: 1s\n  h2_idle_timeout: 1s\n";
        let found: Vec<String> = unknown(text)
            .iter()
            .map(|p| format!("{} {}", p.at, p.field))
            .collect();
        assert_eq!(
            found,
            [
                "2:1 listen_port",
                "6:3 pools.extra",
                "10:30 rollout.steps[].wait"
            ],
            "the old alias idle_timeout is a known key"
        );
    }
}
