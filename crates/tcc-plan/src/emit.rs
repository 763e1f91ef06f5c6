//! Plans as TOML and JSON files.
//!
//! [`Plan`] itself round-trips through both formats unchanged. What
//! `tcc plan --emit` writes is a [`PlanDocument`]: the plan together with its
//! content hash and cost summary, for tools that read the file without the
//! cost model. Reading a document back recomputes both and rejects a file
//! whose recorded hash does not match its plan (it was edited by hand, or
//! written by an incompatible version).

use serde::{Deserialize, Serialize};

use crate::cost::{CostSummary, PlanCost};
use crate::hash::PlanHash;
use crate::Plan;

/// File formats a plan can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error("cannot write the plan as TOML: {0}")]
    TomlWrite(#[from] toml::ser::Error),
    #[error("not a valid plan file (TOML): {0}")]
    TomlRead(#[from] toml::de::Error),
    #[error("cannot write the plan as JSON: {0}")]
    JsonWrite(#[source] serde_json::Error),
    #[error("not a valid plan file (JSON): {0}")]
    JsonRead(#[source] serde_json::Error),
    #[error("the recorded plan hash {recorded} does not match the plan's content ({actual}); was the file edited?")]
    HashMismatch {
        recorded: PlanHash,
        actual: PlanHash,
    },
}

/// A plan with its hash and cost summary, as `tcc plan --emit` writes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanDocument {
    /// SHA-256 of the plan's canonical form (see [`Plan::hash`]).
    pub hash: PlanHash,
    pub cost: CostSummary,
    pub plan: Plan,
}

impl PlanDocument {
    pub fn new(plan: Plan) -> PlanDocument {
        PlanDocument {
            hash: plan.hash(),
            cost: PlanCost::of(&plan).summary(),
            plan,
        }
    }

    pub fn render(&self, format: Format) -> Result<String, EmitError> {
        match format {
            Format::Toml => Ok(toml::to_string(self)?),
            Format::Json => {
                let mut text = serde_json::to_string_pretty(self).map_err(EmitError::JsonWrite)?;
                text.push('\n');
                Ok(text)
            }
        }
    }

    /// Reads a document and checks its recorded hash against its plan. The
    /// cost summary is recomputed, not trusted.
    pub fn parse(text: &str, format: Format) -> Result<PlanDocument, EmitError> {
        let doc: PlanDocument = match format {
            Format::Toml => toml::from_str(text)?,
            Format::Json => serde_json::from_str(text).map_err(EmitError::JsonRead)?,
        };
        let actual = doc.plan.hash();
        if actual != doc.hash {
            return Err(EmitError::HashMismatch {
                recorded: doc.hash,
                actual,
            });
        }
        Ok(PlanDocument::new(doc.plan))
    }
}

impl Plan {
    /// The plan alone as TOML (no hash, no cost summary).
    pub fn to_toml(&self) -> Result<String, EmitError> {
        Ok(toml::to_string(self)?)
    }

    pub fn from_toml(text: &str) -> Result<Plan, EmitError> {
        Ok(toml::from_str(text)?)
    }

    /// The plan alone as pretty JSON (no hash, no cost summary).
    pub fn to_json(&self) -> Result<String, EmitError> {
        serde_json::to_string_pretty(self).map_err(EmitError::JsonWrite)
    }

    pub fn from_json(text: &str) -> Result<Plan, EmitError> {
        serde_json::from_str(text).map_err(EmitError::JsonRead)
    }
}
