//! safetensors files whose bytes depend only on their content.

use std::collections::{BTreeMap, HashMap};

use safetensors::tensor::View;
use serde_json::Value;

/// Serialises `tensors` and `metadata` as safetensors, with the header's
/// entries in sorted order: the same tensors and metadata give the same
/// bytes in every process (the `safetensors` crate takes the metadata as a
/// `HashMap` and writes it in that map's random order).
pub fn safetensors_bytes<S, V>(
    tensors: impl IntoIterator<Item = (S, V)>,
    metadata: Option<BTreeMap<String, String>>,
) -> Result<Vec<u8>, String>
where
    S: AsRef<str>,
    V: View,
{
    let tensors: Vec<(String, V)> = tensors
        .into_iter()
        .map(|(n, v)| (n.as_ref().to_string(), v))
        .collect();
    let metadata: Option<HashMap<String, String>> = metadata.map(|m| m.into_iter().collect());
    let bytes = safetensors::tensor::serialize(tensors, metadata).map_err(|e| e.to_string())?;
    canonical_header(&bytes)
}

/// `bytes` (a safetensors file) with its header rewritten in sorted order.
/// Offsets in the header are relative to the data, which stays as it is.
fn canonical_header(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let bad = || "the serialised safetensors header is malformed".to_string();
    let n = u64::from_le_bytes(
        bytes
            .get(..8)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    ) as usize;
    let header = bytes.get(8..8 + n).ok_or_else(bad)?;
    let data = &bytes[8 + n..];
    let parsed: BTreeMap<String, Value> =
        serde_json::from_slice(header).map_err(|e| e.to_string())?;
    let mut sorted: BTreeMap<String, Value> = BTreeMap::new();
    for (k, v) in parsed {
        sorted.insert(k, sort_value(v));
    }
    let mut text = serde_json::to_string(&sorted).map_err(|e| e.to_string())?;
    // The data starts 8-byte aligned, as the safetensors crate pads it.
    while (8 + text.len()) % 8 != 0 {
        text.push(' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + data.len());
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(data);
    Ok(out)
}

/// Objects as sorted maps, however serde_json stores them.
fn sort_value(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let sorted: BTreeMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, sort_value(v))).collect();
            serde_json::to_value(sorted).unwrap_or(Value::Null)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::{Dtype, TensorView};

    #[test]
    fn same_content_same_bytes_and_readable() {
        let a: Vec<u8> = [1f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let b: Vec<u8> = [3f32].iter().flat_map(|x| x.to_le_bytes()).collect();
        let meta: BTreeMap<String, String> = (0..20)
            .map(|i| (format!("key{i}"), format!("value {i}")))
            .collect();
        let make = || {
            safetensors_bytes(
                [
                    ("b", TensorView::new(Dtype::F32, vec![1], &b).unwrap()),
                    ("a", TensorView::new(Dtype::F32, vec![2], &a).unwrap()),
                ],
                Some(meta.clone()),
            )
            .unwrap()
        };
        let first = make();
        // The plain crate's bytes change from map to map; ours do not.
        for _ in 0..5 {
            assert_eq!(make(), first);
        }
        let st = safetensors::SafeTensors::deserialize(&first).unwrap();
        assert_eq!(st.tensor("a").unwrap().data(), &a[..]);
        assert_eq!(st.tensor("b").unwrap().data(), &b[..]);
        let (_, header) = safetensors::SafeTensors::read_metadata(&first).unwrap();
        let got = header.metadata().clone().unwrap();
        assert_eq!(got.len(), 20);
        assert_eq!(got["key7"], "value 7");
        assert_eq!(
            (8 + u64::from_le_bytes(first[..8].try_into().unwrap())) % 8,
            0
        );
    }
}
