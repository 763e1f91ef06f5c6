//! The plan's content hash. Calibration files record it to say which plan
//! their priors were fitted for.
//!
//! Canonical form: the bytes `tcc-plan-v1\n`, then the plan serialised as
//! JSON with `source` and `weights` removed, object keys sorted, no
//! whitespace, floats in serde_json's shortest round-trip form. The hash is
//! SHA-256 of those bytes.
//!
//! Changing the canonical form (or a serialised field name or enum spelling
//! of the plan, the model shape, the sampler or the calibration settings)
//! changes the hash of every plan and so unbinds every calibration file
//! users have fitted. A field added later keeps old hashes only if it is
//! skipped from serialisation when it holds its default.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::Plan;

/// Domain separation and version of the canonical form.
const CANONICAL_PREFIX: &[u8] = b"tcc-plan-v1\n";

/// Fields of [`Plan`] that do not change what is computed.
const UNHASHED_FIELDS: [&str; 2] = ["source", "weights"];

/// A SHA-256 content hash of a plan.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlanHash(pub [u8; 32]);

impl PlanHash {
    /// The first 12 hex digits, as `tcc plan --show` prints them.
    pub fn short(&self) -> String {
        self.to_string()[..12].to_string()
    }

    pub fn from_hex(text: &str) -> Option<PlanHash> {
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(PlanHash(bytes))
    }
}

impl fmt::Display for PlanHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PlanHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlanHash({self})")
    }
}

impl Serialize for PlanHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PlanHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        PlanHash::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom("expected 64 hex digits of a SHA-256 hash"))
    }
}

impl Plan {
    /// The canonical bytes that [`Plan::hash`] digests.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut value = serde_json::to_value(self).expect("a plan always serialises to JSON");
        if let Value::Object(map) = &mut value {
            for field in UNHASHED_FIELDS {
                map.remove(field);
            }
        }
        let mut out = CANONICAL_PREFIX.to_vec();
        write_canonical(&value, &mut out);
        out
    }

    /// The content hash: SHA-256 of [`Plan::canonical_bytes`].
    pub fn hash(&self) -> PlanHash {
        PlanHash(Sha256::digest(self.canonical_bytes()).into())
    }
}

/// JSON with sorted keys and no whitespace, whatever map order serde_json
/// was built with (its `preserve_order` feature may be on in the build).
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(key.clone()), out);
                out.push(b':');
                write_canonical(item, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    serde_json::to_writer(out, value).expect("writing JSON to memory cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects() {
        let h = PlanHash([0xab; 32]);
        assert_eq!(PlanHash::from_hex(&h.to_string()), Some(h));
        assert_eq!(h.short(), "abababababab");
        assert_eq!(PlanHash::from_hex("ab"), None);
        assert_eq!(PlanHash::from_hex(&"zz".repeat(32)), None);
        assert_eq!(PlanHash::from_hex(&"é".repeat(32)), None);
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v: Value = serde_json::from_str(r#"{"b":[{"y":1,"x":2.5}],"a":"q\""}"#).unwrap();
        let mut out = Vec::new();
        write_canonical(&v, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":"q\"","b":[{"x":2.5,"y":1}]}"#
        );
    }
}
