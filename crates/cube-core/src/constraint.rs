//! Placement constraints: `node.labels.zone == a`, `node.name != w2`, `node.id == <uuid>`.
//!
//! Constraints are written as strings in the task spec (so job files stay readable) and parsed
//! here; validation reports a malformed one with its index.

use std::collections::BTreeMap;
use std::fmt;

use crate::NodeId;

/// One parsed constraint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraint {
    /// What is compared.
    pub attribute: Attribute,
    /// `==` or `!=`.
    pub op: Op,
    /// The value compared against.
    pub value: String,
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

impl Constraint {
    /// Parses `attribute op value`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (op, (lhs, rhs)) = if let Some(parts) = text.split_once("==") {
            (Op::Eq, parts)
        } else if let Some(parts) = text.split_once("!=") {
            (Op::Ne, parts)
        } else {
            return Err(format!("{text:?}: expected `<attribute> == <value>` or `!=`"));
        };
        let lhs = lhs.trim();
        let value = rhs.trim().trim_matches('"').to_owned();
        let attribute = match lhs {
            "node.name" => Attribute::Name,
            "node.id" => Attribute::Id,
            _ => match lhs.strip_prefix("node.labels.") {
                Some(key) if !key.is_empty() => Attribute::Label(key.to_owned()),
                _ => {
                    return Err(format!(
                        "{text:?}: unknown attribute {lhs:?} (use node.labels.<key>, node.name or node.id)"
                    ));
                }
            },
        };
        if value.is_empty() {
            return Err(format!("{text:?}: missing value"));
        }
        Ok(Self { attribute, op, value })
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
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn parses_and_matches() {
        let labels = BTreeMap::from([("zone".to_owned(), "a".to_owned())]);
        let id = NodeId::from_uuid(Uuid::nil());
        let c = Constraint::parse("node.labels.zone == a").unwrap();
        assert!(c.matches(id, "w1", &labels));
        assert!(!Constraint::parse("node.labels.zone != a").unwrap().matches(id, "w1", &labels));
        assert!(!Constraint::parse("node.labels.rack == r1").unwrap().matches(id, "w1", &labels));
        assert!(Constraint::parse("node.name == \"w1\"").unwrap().matches(id, "w1", &labels));
        assert!(Constraint::parse(&format!("node.id == {id}")).unwrap().matches(id, "x", &labels));
        assert_eq!(c.to_string(), "node.labels.zone == a");
    }

    #[test]
    fn rejects_nonsense() {
        for bad in ["zone = a", "node.labels. == a", "node.cpu == 4", "node.name == "] {
            assert!(Constraint::parse(bad).is_err(), "{bad}");
        }
    }
}
