//! Sums as safetensors tensors: f64 and u64 little-endian, written in name
//! order so that the bytes depend only on the contents; read back with
//! every shape and value checked, errors naming the tensor.

use std::collections::{BTreeMap, HashMap};

use safetensors::tensor::{Dtype, SafeTensors};

use crate::CalibError;

/// Tensors to write.
#[derive(Default)]
pub(crate) struct Writer {
    entries: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
}

impl Writer {
    pub fn f64(&mut self, name: String, shape: Vec<usize>, data: &[f64]) {
        let bytes = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.entries.insert(name, (Dtype::F64, shape, bytes));
    }

    pub fn u64(&mut self, name: String, shape: Vec<usize>, data: &[u64]) {
        let bytes = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.entries.insert(name, (Dtype::U64, shape, bytes));
    }

    /// The safetensors bytes, with `metadata`. The header is written
    /// with sorted keys (the `safetensors` crate writes its metadata map in
    /// a random order), so the bytes depend only on the contents.
    pub fn into_bytes(self, metadata: BTreeMap<String, String>) -> Result<Vec<u8>, CalibError> {
        let mut header = serde_json::Map::new();
        if !metadata.is_empty() {
            header.insert(
                "__metadata__".into(),
                serde_json::to_value(&metadata).map_err(|e| CalibError::Format(e.to_string()))?,
            );
        }
        let mut offset = 0usize;
        for (name, (dtype, shape, bytes)) in &self.entries {
            let dtype = match dtype {
                Dtype::F64 => "F64",
                _ => "U64",
            };
            header.insert(
                name.clone(),
                serde_json::json!({
                    "dtype": dtype,
                    "shape": shape,
                    "data_offsets": [offset, offset + bytes.len()],
                }),
            );
            offset += bytes.len();
        }
        let mut text =
            serde_json::to_string(&header).map_err(|e| CalibError::Format(e.to_string()))?;
        // The data starts 8-byte aligned.
        while (8 + text.len()) % 8 != 0 {
            text.push(' ');
        }
        let mut out = Vec::with_capacity(8 + text.len() + offset);
        out.extend_from_slice(&(text.len() as u64).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
        for (_, _, bytes) in self.entries.values() {
            out.extend_from_slice(bytes);
        }
        Ok(out)
    }
}

/// Tensors to read, from a file or a message named `origin`.
pub(crate) struct Reader<'a> {
    st: SafeTensors<'a>,
    metadata: HashMap<String, String>,
    origin: &'a str,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8], origin: &'a str) -> Result<Reader<'a>, CalibError> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| {
            CalibError::Format(format!("{origin}: not a readable safetensors file ({e})"))
        })?;
        let metadata = SafeTensors::read_metadata(bytes)
            .map(|(_, m)| m.metadata().clone().unwrap_or_default())
            .unwrap_or_default();
        Ok(Reader {
            st,
            metadata,
            origin,
        })
    }

    pub fn bad(&self, what: impl std::fmt::Display) -> CalibError {
        CalibError::Format(format!("{}: {what}", self.origin))
    }

    pub fn has(&self, name: &str) -> bool {
        self.st.tensor(name).is_ok()
    }

    fn raw(&self, name: &str, dtype: Dtype) -> Result<(Vec<usize>, &'a [u8]), CalibError> {
        let v = self
            .st
            .tensor(name)
            .map_err(|_| self.bad(format!("missing tensor `{name}`")))?;
        if v.dtype() != dtype {
            return Err(self.bad(format!(
                "tensor `{name}` is {:?}, expected {dtype:?}",
                v.dtype()
            )));
        }
        Ok((v.shape().to_vec(), v.data()))
    }

    /// An f64 tensor: its shape and its values, all finite.
    pub fn f64(&self, name: &str) -> Result<(Vec<usize>, Vec<f64>), CalibError> {
        let (shape, data) = self.raw(name, Dtype::F64)?;
        let v: Vec<f64> = data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect();
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(self.bad(format!("tensor `{name}` has a non-finite value at {i}")));
        }
        Ok((shape, v))
    }

    pub fn u64(&self, name: &str) -> Result<(Vec<usize>, Vec<u64>), CalibError> {
        let (shape, data) = self.raw(name, Dtype::U64)?;
        let v = data
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect();
        Ok((shape, v))
    }

    /// An f64 tensor of exactly `shape`.
    pub fn f64_shaped(&self, name: &str, shape: &[usize]) -> Result<Vec<f64>, CalibError> {
        let (s, v) = self.f64(name)?;
        if s != shape {
            return Err(self.bad(format!(
                "tensor `{name}` has shape {s:?}, expected {shape:?}"
            )));
        }
        Ok(v)
    }

    /// A u64 scalar stored as shape `[1]`.
    pub fn u64_scalar(&self, name: &str) -> Result<u64, CalibError> {
        let (s, v) = self.u64(name)?;
        if s != [1] {
            return Err(self.bad(format!("tensor `{name}` has shape {s:?}, expected [1]")));
        }
        Ok(v[0])
    }

    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }
}
