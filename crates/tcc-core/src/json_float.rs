//! f64 in JSON, which has no infinity or NaN: non-finite values as the
//! strings `"inf"`, `"-inf"` and `"nan"` (`#[serde(with = "tcc_core::json_float")]`).

use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    if x.is_nan() {
        s.serialize_str("nan")
    } else if x.is_infinite() {
        s.serialize_str(if *x > 0.0 { "inf" } else { "-inf" })
    } else {
        s.serialize_f64(*x)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Repr {
    Number(f64),
    Text(String),
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    match Repr::deserialize(d)? {
        Repr::Number(x) => Ok(x),
        Repr::Text(t) => match t.as_str() {
            "inf" => Ok(f64::INFINITY),
            "-inf" => Ok(f64::NEG_INFINITY),
            "nan" => Ok(f64::NAN),
            _ => Err(serde::de::Error::custom(format!(
                "expected a number, \"inf\", \"-inf\" or \"nan\", found \"{t}\""
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    struct X(#[serde(with = "super")] f64);

    #[test]
    fn non_finite_values_survive_json() {
        for x in [1.5, f64::INFINITY, f64::NEG_INFINITY] {
            let text = serde_json::to_string(&X(x)).unwrap();
            assert_eq!(serde_json::from_str::<X>(&text).unwrap().0, x, "{text}");
        }
        let nan = serde_json::to_string(&X(f64::NAN)).unwrap();
        assert_eq!(nan, r#""nan""#);
        assert!(serde_json::from_str::<X>(&nan).unwrap().0.is_nan());
        assert!(serde_json::from_str::<X>(r#""infinity""#).is_err());
    }
}
