//! Kubernetes label selectors (`matchLabels`, `matchExpressions`), matched purely.
//!
//! Why here: pools select namespaces, Services and nodes (who may get a pool's addresses, which
//! nodes announce them), and that decision must be testable without an API server. The shape is
//! `metav1.LabelSelector`, so users write what they know from every other controller.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A label selector as Kubernetes spells it. An empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must all be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Requirements that must all hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct LabelRequirement {
    /// The label key.
    pub key: String,
    /// How the key's value is compared.
    pub operator: LabelOperator,
    /// The values for `In` and `NotIn`; empty for `Exists` and `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// The operators of `matchExpressions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum LabelOperator {
    /// The label's value is one of `values`.
    In,
    /// The label is absent, or its value is none of `values`.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// Why a selector cannot be used, naming the requirement at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// `In`/`NotIn` without values, or `Exists`/`DoesNotExist` with values.
    #[error("matchExpressions key {key:?} operator {operator:?} {problem}")]
    Values {
        /// The label key.
        key: String,
        /// The operator.
        operator: LabelOperator,
        /// What is wrong and what to do.
        problem: &'static str,
    },
}

impl LabelSelector {
    /// Check the selector is well formed, as the API server does for its own selectors.
    pub fn validate(&self) -> Result<(), SelectorError> {
        for r in &self.match_expressions {
            let problem = match (r.operator, r.values.is_empty()) {
                (LabelOperator::In | LabelOperator::NotIn, true) => {
                    Some("needs at least one value: add values")
                }
                (LabelOperator::Exists | LabelOperator::DoesNotExist, false) => {
                    Some("takes no values: remove them")
                }
                _ => None,
            };
            if let Some(problem) = problem {
                return Err(SelectorError::Values {
                    key: r.key.clone(),
                    operator: r.operator,
                    problem,
                });
            }
        }
        Ok(())
    }

    /// Whether `labels` satisfy every label and requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let got = labels.get(&r.key);
                match r.operator {
                    LabelOperator::In => got.is_some_and(|v| r.values.contains(v)),
                    LabelOperator::NotIn => !got.is_some_and(|v| r.values.contains(v)),
                    LabelOperator::Exists => got.is_some(),
                    LabelOperator::DoesNotExist => got.is_none(),
                }
            })
    }

    /// Whether the selector is empty (matches everything).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, operator: LabelOperator, values: &[&str]) -> LabelRequirement {
        LabelRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn empty_matches_everything() {
        assert!(LabelSelector::default().matches(&labels(&[])));
        assert!(LabelSelector::default().matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn labels_and_expressions_all_must_hold() {
        let s = LabelSelector {
            match_labels: labels(&[("team", "a")]),
            match_expressions: vec![
                req("tier", LabelOperator::In, &["web", "api"]),
                req("legacy", LabelOperator::DoesNotExist, &[]),
            ],
        };
        assert!(s.matches(&labels(&[("team", "a"), ("tier", "web")])));
        assert!(!s.matches(&labels(&[("team", "b"), ("tier", "web")])));
        assert!(!s.matches(&labels(&[("team", "a"), ("tier", "db")])));
        assert!(!s.matches(&labels(&[("team", "a")])));
        assert!(!s.matches(&labels(&[("team", "a"), ("tier", "web"), ("legacy", "")])));
        let n = LabelSelector {
            match_expressions: vec![
                req("env", LabelOperator::NotIn, &["prod"]),
                req("x", LabelOperator::Exists, &[]),
            ],
            ..Default::default()
        };
        assert!(n.matches(&labels(&[("x", "1")])));
        assert!(n.matches(&labels(&[("x", "1"), ("env", "dev")])));
        assert!(!n.matches(&labels(&[("x", "1"), ("env", "prod")])));
    }

    #[test]
    fn malformed_requirements_are_named() {
        let s = LabelSelector {
            match_expressions: vec![req("tier", LabelOperator::In, &[])],
            ..Default::default()
        };
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("tier") && e.contains("In"), "{e}");
        let s = LabelSelector {
            match_expressions: vec![req("x", LabelOperator::Exists, &["y"])],
            ..Default::default()
        };
        assert!(s.validate().is_err());
        assert!(LabelSelector::default().validate().is_ok());
    }
}
