//! Placement constraints: `node.labels.zone == a`, `node.name != w2`, `node.id == <uuid>`.
//!
//! A spec holds its constraints parsed ([`Constraint`]), so placement never parses text and a
//! record whose constraint no longer parses fails to load instead of being placed anywhere.
//! They read and write as the text the user wrote, so job files, the API and stored records
//! keep their shape.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{CoreError, NodeId};

/// One parsed constraint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraint {
    /// What is compared.
    pub attribute: Attribute,
    /// `==` or `!=`.
    pub op: Op,
    /// The value compared against.
    pub value: String,
    /// The text it was written as (written back unchanged).
    text: String,
}

/// Node attributes a constraint can test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attribute {
    /// `node.labels.<key>` (a missing label is the empty string).
    Label(String),
    /// `node.name`.
    Name,
    /// `node.id`.
    Id,
}

/// Comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

/// What is wrong with a constraint's text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintProblem {
    /// Neither `==` nor `!=`.
    #[error("expected `<attribute> == <value>` or `!=`")]
    NoOperator,
    /// Not an attribute a constraint can test.
    #[error("unknown attribute {0:?} (use node.labels.<key>, node.name or node.id)")]
    UnknownAttribute(String),
    /// Nothing after the operator.
    #[error("missing value")]
    NoValue,
}

impl Constraint {
    /// Parses `attribute op value`.
    pub fn parse(text: &str) -> Result<Self, CoreError> {
        let bad = |problem| CoreError::InvalidConstraint { input: text.to_owned(), problem };
        let (op, (lhs, rhs)) = if let Some(parts) = text.split_once("==") {
            (Op::Eq, parts)
        } else if let Some(parts) = text.split_once("!=") {
            (Op::Ne, parts)
        } else {
            return Err(bad(ConstraintProblem::NoOperator));
        };
        let lhs = lhs.trim();
        let value = rhs.trim().trim_matches('"').to_owned();
        let attribute = match lhs {
            "node.name" => Attribute::Name,
            "node.id" => Attribute::Id,
            _ => match lhs.strip_prefix("node.labels.") {
                Some(key) if !key.is_empty() => Attribute::Label(key.to_owned()),
                _ => return Err(bad(ConstraintProblem::UnknownAttribute(lhs.to_owned()))),
            },
        };
        if value.is_empty() {
            return Err(bad(ConstraintProblem::NoValue));
        }
        Ok(Self { attribute, op, value, text: text.to_owned() })
    }

    /// Whether a node with these properties satisfies the constraint.
    pub fn matches(&self, id: NodeId, name: &str, labels: &BTreeMap<String, String>) -> bool {
        let actual = match &self.attribute {
            Attribute::Label(key) => labels.get(key).map(String::as_str).unwrap_or(""),
            Attribute::Name => name,
            Attribute::Id => return self.compare(&id.to_string()),
        };
        self.compare(actual)
    }

    fn compare(&self, actual: &str) -> bool {
        match self.op {
            Op::Eq => actual == self.value,
            Op::Ne => actual != self.value,
        }
    }

    /// The text it was written as.
    pub fn as_written(&self) -> &str {
        &self.text
    }
}

impl FromStr for Constraint {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The canonical form, e.g. `node.labels.zone == a` (for explanations).
impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.attribute {
            Attribute::Label(k) => write!(f, "node.labels.{k}")?,
            Attribute::Name => f.write_str("node.name")?,
            Attribute::Id => f.write_str("node.id")?,
        }
        let op = match self.op {
            Op::Eq => "==",
            Op::Ne => "!=",
        };
        write!(f, " {op} {}", self.value)
    }
}

/// Written as its text, e.g. `node.labels.zone == a`.
impl schemars::JsonSchema for Constraint {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Constraint".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "`node.labels.KEY`, `node.name` or `node.id`, then `==` or `!=`, then a value.",
            "examples": ["node.labels.zone == a", "node.name != w3"],
        })
    }
}

impl Serialize for Constraint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Constraint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Constraint::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn parse(text: &str) -> Constraint {
        Constraint::parse(text).unwrap()
    }

    #[test]
    fn parses_and_matches() {
        let labels = BTreeMap::from([("zone".to_owned(), "a".to_owned())]);
        let id = NodeId::from_uuid(Uuid::nil());
        let c = parse("node.labels.zone == a");
        assert!(c.matches(id, "w1", &labels));
        assert!(!parse("node.labels.zone != a").matches(id, "w1", &labels));
        assert!(!parse("node.labels.rack == r1").matches(id, "w1", &labels));
        assert!(parse("node.name == \"w1\"").matches(id, "w1", &labels));
        assert!(parse(&format!("node.id == {id}")).matches(id, "x", &labels));
        assert_eq!(c.to_string(), "node.labels.zone == a");
    }

    #[test]
    fn rejects_nonsense() {
        for bad in ["zone = a", "node.labels. == a", "node.cpu == 4", "node.name == "] {
            assert!(Constraint::parse(bad).is_err(), "{bad}");
        }
        let err = Constraint::parse("zone = a").unwrap_err();
        assert_eq!(err.to_string(), "\"zone = a\": expected `<attribute> == <value>` or `!=`");
    }

    #[test]
    fn it_reads_and_writes_as_written() {
        let c: Constraint = serde_json::from_str("\"node.labels.zone!=b\"").unwrap();
        assert_eq!(c.op, Op::Ne);
        assert_eq!(c.as_written(), "node.labels.zone!=b");
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"node.labels.zone!=b\"");
        let err = serde_json::from_str::<Constraint>("\"node.cpu == 4\"").unwrap_err();
        assert!(err.to_string().contains("unknown attribute \"node.cpu\""), "{err}");
    }
}
