use std::fmt;
use std::str::FromStr;

use candle_core::quantized::GgmlDType;
use candle_core::DType;

/// A GGUF block quantization for the T5 encoder's linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quant {
    /// 8-bit, blocks of 32 with one f16 scale (8.5 bits per weight; T5-XXL's
    /// encoder ~5 GB).
    Q8_0,
    /// 4-bit, blocks of 32 with one f16 scale (4.5 bits per weight; ~2.7 GB).
    Q4_0,
}

impl Quant {
    pub const ALL: [Quant; 2] = [Quant::Q8_0, Quant::Q4_0];

    /// The name used on the command line, in file names and cache keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Quant::Q8_0 => "q8_0",
            Quant::Q4_0 => "q4_0",
        }
    }

    /// candle's block type.
    pub fn ggml(self) -> GgmlDType {
        match self {
            Quant::Q8_0 => GgmlDType::Q8_0,
            Quant::Q4_0 => GgmlDType::Q4_0,
        }
    }

    /// The file `tcc quantize-t5` writes into a `text_encoder/` folder and
    /// [`TextEncoder::load`](crate::TextEncoder::load) reads for this type.
    pub fn file_name(self) -> String {
        format!("model.{}.gguf", self.as_str())
    }
}

/// How the T5 encoder's weights are held in memory: dense (`F32`, `BF16`),
/// read from the pipeline's safetensors, or block-quantized, read from a GGUF
/// file made once by [`quantize_encoder`](crate::quantize_encoder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TextPrecision {
    Dense(DType),
    Quantized(Quant),
}

impl TextPrecision {
    /// `f32`, `bf16`, `q8_0`, ...: the cache key's precision field (dense
    /// names are candle's dtype names, so older cache entries stay valid).
    pub fn as_str(self) -> &'static str {
        match self {
            TextPrecision::Dense(d) => d.as_str(),
            TextPrecision::Quantized(q) => q.as_str(),
        }
    }
}

impl From<DType> for TextPrecision {
    fn from(d: DType) -> Self {
        TextPrecision::Dense(d)
    }
}

impl From<Quant> for TextPrecision {
    fn from(q: Quant) -> Self {
        TextPrecision::Quantized(q)
    }
}

impl fmt::Display for TextPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Quant {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quant::ALL
            .into_iter()
            .find(|q| q.as_str() == s)
            .ok_or_else(|| format!("unknown quantization {s:?}: use q8_0 or q4_0"))
    }
}

impl FromStr for TextPrecision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(TextPrecision::Dense(DType::F32)),
            "bf16" => Ok(TextPrecision::Dense(DType::BF16)),
            _ => s
                .parse::<Quant>()
                .map(TextPrecision::Quantized)
                .map_err(|_| {
                    format!("unknown text encoder precision {s:?}: use bf16, f32, q8_0 or q4_0")
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in ["f32", "bf16", "q8_0", "q4_0"] {
            assert_eq!(s.parse::<TextPrecision>().unwrap().as_str(), s);
        }
        assert!("f16".parse::<TextPrecision>().is_err());
        assert!("q4k".parse::<TextPrecision>().unwrap_err().contains("q8_0"));
        assert_eq!(Quant::Q4_0.file_name(), "model.q4_0.gguf");
    }
}
