//! E2B templates: the `templateID` of a create request names one. `base`
//! (E2B's default) always exists: the default policy, on the host's
//! `/usr`. A TOML file (`--e2b-templates FILE`) adds or replaces
//! templates, one table per name holding policy fields as in a policy
//! file:
//!
//! ```toml
//! [python]
//! image = "python:3.11"      # or filesystem = { image = "…" }; pulled on first use
//! limits = { memory = "2g", timeout = "1h" }
//! network = { mode = "allowlist", allow = ["pypi.org:443"] }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use stockade_policy::Policy;

use crate::error::ServeError;

/// Name of the template used when a request names none.
pub const DEFAULT_TEMPLATE: &str = "base";

/// One template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub policy: Policy,
}

/// The templates a listener knows, by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Templates(BTreeMap<String, Template>);

impl Default for Templates {
    fn default() -> Self {
        Templates(BTreeMap::from([(
            DEFAULT_TEMPLATE.to_string(),
            Template {
                policy: Policy::default(),
            },
        )]))
    }
}

impl Templates {
    pub fn load(path: &Path) -> Result<Templates, ServeError> {
        let text = std::fs::read_to_string(path).map_err(|source| ServeError::Io {
            what: "read the E2B templates file",
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| ServeError::Config(format!("{}: {e}", path.display())))
    }

    /// Parses the templates file's text (see the module's documentation).
    pub fn parse(text: &str) -> Result<Templates, String> {
        let doc: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut out = Templates::default();
        for (name, v) in doc {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':'))
            {
                return Err(format!(
                    "template name {name:?} is not valid; use letters, digits, '-', '_', '.', '/' or ':'"
                ));
            }
            let toml::Value::Table(t) = v else {
                return Err(format!(
                    "template {name:?} must be a table of policy fields, e.g. [{name}] then limits = {{ memory = \"2g\" }}"
                ));
            };
            // `image = "REF"` is short for `filesystem.image`.
            let mut t = t;
            let image = match t.remove("image") {
                None => None,
                Some(toml::Value::String(i)) => Some(i),
                Some(_) => {
                    return Err(format!(
                        "template {name:?}: image must be a string, e.g. image = \"python:3.11\""
                    ))
                }
            };
            let body = toml::to_string(&t).map_err(|e| e.to_string())?;
            let mut policy = Policy::from_toml_str(&body)
                .map_err(|e| format!("template {name:?} is not a valid policy: {e}"))?;
            if image.is_some() {
                policy.filesystem.image = image;
            }
            policy
                .validate()
                .map_err(|e| format!("template {name:?} is not a valid policy: {e}"))?;
            out.0.insert(name, Template { policy });
        }
        Ok(out)
    }

    pub fn get(&self, name: &str) -> Option<&Template> {
        self.0.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_exists_without_a_file_and_a_file_adds_templates() {
        assert!(Templates::default().get("base").is_some());
        let t = Templates::parse("[small]\nlimits = { memory = \"64m\" }\n").unwrap();
        assert!(t.get("base").is_some());
        let small = t.get("small").unwrap();
        assert_eq!(
            small.policy.limits.memory,
            stockade_policy::ByteSize::mib(64)
        );
    }

    #[test]
    fn a_template_names_an_image() {
        let t = Templates::parse("[py]\nimage = \"python:3.11\"\n").unwrap();
        let py = t.get("py").unwrap();
        assert_eq!(py.policy.filesystem.image.as_deref(), Some("python:3.11"));
        let t = Templates::parse("[py]\nfilesystem = { image = \"oci:/srv/py:1\" }\n").unwrap();
        assert_eq!(
            t.get("py").unwrap().policy.filesystem.image.as_deref(),
            Some("oci:/srv/py:1")
        );
    }

    #[test]
    fn the_example_in_docs_e2b_md_parses() {
        let doc = include_str!("../../../../docs/e2b.md");
        let start = doc.find("```toml\n").expect("a toml example") + 8;
        let end = start + doc[start..].find("```").unwrap();
        let t = Templates::parse(&doc[start..end]).unwrap();
        let py = t.get("python").unwrap();
        assert_eq!(py.policy.network.mode, stockade_policy::NetMode::Allowlist);
        assert_eq!(py.policy.limits.timeout, stockade_policy::Span::secs(3600));
        assert!(t.get("offline").is_some());
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        let e = Templates::parse("[x]\nlimits = { memroy = \"64m\" }\n").unwrap_err();
        assert!(e.contains("\"x\"") && e.contains("memroy"), "{e}");
        let e = Templates::parse("[x]\nimage = 3\n").unwrap_err();
        assert!(e.contains("image must be a string"), "{e}");
        let e = Templates::parse("x = 1\n").unwrap_err();
        assert!(e.contains("table"), "{e}");
        let e = Templates::parse("[\"a b\"]\n").unwrap_err();
        assert!(e.contains("not valid"), "{e}");
    }
}
