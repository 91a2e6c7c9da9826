//! Canary steps, stickiness and failure policy (`[services.NAME.deploy]`
//! keys used by `strategy = "canary"`).

use crate::duration::{self, Dur};
use crate::problem::Problem;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A step: set the canary's weight, pause, or both (weight first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryStep {
    /// Share of traffic for the canary, in percent (0..=100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Pause>,
}

/// `pause = "30s"` or `pause = "manual"` (wait for `ferry promote`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    Manual,
    For(Dur),
}

impl Serialize for Pause {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Pause::Manual => s.serialize_str("manual"),
            Pause::For(d) => d.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Pause {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text == "manual" {
            return Ok(Pause::Manual);
        }
        duration::parse(&text).map(Pause::For).map_err(|e| {
            serde::de::Error::custom(format!(
                "pause: {e}, or \"manual\" to wait for `ferry promote`"
            ))
        })
    }
}

impl utoipa::PartialSchema for Pause {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::duration::string_schema(
            "How long to hold a step (a duration such as \"30s\"), or \"manual\" to wait for `ferry promote`.",
            "manual",
        )
    }
}

impl utoipa::ToSchema for Pause {}

/// What to do when analysis fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Take the canary out of traffic at once and stop it.
    #[default]
    Rollback,
    /// Hold traffic where it is and wait for a human (for releases that
    /// cannot go back, e.g. after an irreversible migration).
    Pause,
}

/// Where a user's identity comes from, so one user sees one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum Stickiness {
    Header(String),
    Cookie(String),
}

impl Stickiness {
    /// `"header:X-User-Id"` or `"cookie:session"`.
    pub fn parse(text: &str) -> Result<Stickiness, String> {
        let (kind, name) = text.split_once(':').ok_or_else(|| {
            format!("stickiness = \"{text}\" needs the form \"header:NAME\" or \"cookie:NAME\"")
        })?;
        let name = name.trim();
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid {
            return Err(format!(
                "stickiness = \"{text}\": `{name}` is not a valid header or cookie name"
            ));
        }
        match kind {
            "header" => Ok(Stickiness::Header(name.to_string())),
            "cookie" => Ok(Stickiness::Cookie(name.to_string())),
            _ => Err(format!(
                "stickiness = \"{text}\": use \"header:NAME\" or \"cookie:NAME\""
            )),
        }
    }
}

/// Validate canary steps; `at` is the key path of the deploy table.
pub fn validate_steps(steps: &[CanaryStep], at: &[String]) -> Vec<Problem> {
    let mut key = at.to_vec();
    key.push("steps".into());
    let mut p = Vec::new();
    if steps.is_empty() {
        p.push(Problem {
            path: key.clone(),
            message: "strategy = \"canary\" needs steps, e.g. steps = [{ weight = 10 }, { pause = \"1m\" }, { weight = 50 }]".into(),
        });
    }
    for (i, s) in steps.iter().enumerate() {
        if s.weight.is_none() && s.pause.is_none() {
            p.push(Problem {
                path: key.clone(),
                message: format!(
                    "steps[{i}] is empty; give weight = N, pause = \"30s\"/\"manual\", or both"
                ),
            });
        }
        if let Some(w) = s.weight
            && w > 100
        {
            p.push(Problem {
                path: key.clone(),
                message: format!("steps[{i}]: weight = {w} is a percentage; use 0 to 100"),
            });
        }
    }
    p
}

/// Instances a canary needs to carry `weight` percent of `total` instances'
/// traffic: at least one while it has any weight.
pub fn instances_for(weight: u32, total: u32) -> u32 {
    if weight == 0 {
        return 0;
    }
    ((total as u64 * weight as u64).div_ceil(100) as u32).clamp(1, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stickiness_parses() {
        assert_eq!(
            Stickiness::parse("header:X-User-Id").unwrap(),
            Stickiness::Header("X-User-Id".into())
        );
        assert_eq!(
            Stickiness::parse("cookie:sid").unwrap(),
            Stickiness::Cookie("sid".into())
        );
        assert!(Stickiness::parse("query:x").is_err());
        assert!(Stickiness::parse("header:").is_err());
    }

    #[test]
    fn canary_instances_follow_the_weight() {
        assert_eq!(instances_for(5, 3), 1);
        assert_eq!(instances_for(50, 3), 2);
        assert_eq!(instances_for(100, 3), 3);
        assert_eq!(instances_for(0, 3), 0);
    }
}
