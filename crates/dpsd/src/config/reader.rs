//! Reads typed values out of a TOML table, with environment and command-line overrides, and
//! collects every problem instead of stopping at the first.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Prefix of the environment variables that override config keys: `api.listen` is
/// `DPSD_API_LISTEN`.
pub const ENV_PREFIX: &str = "DPSD_";

/// A value type that can be read from config (a TOML value, or override text).
pub trait FromConfig: Sized {
    /// Human description of the expected form, for error messages.
    const EXPECTED: &'static str;
    /// From a TOML value.
    fn from_toml(v: &toml::Value) -> Option<Self> {
        v.as_str().and_then(Self::from_text)
    }
    /// From override text.
    fn from_text(s: &str) -> Option<Self>;
}

impl FromConfig for String {
    const EXPECTED: &'static str = "a string";
    fn from_text(s: &str) -> Option<Self> {
        Some(s.to_owned())
    }
}

/// A path; empty text is an empty path, which optional keys read as "not set".
impl FromConfig for PathBuf {
    const EXPECTED: &'static str = "a path";
    fn from_text(s: &str) -> Option<Self> {
        Some(PathBuf::from(s))
    }
}

impl FromConfig for bool {
    const EXPECTED: &'static str = "true or false";
    fn from_toml(v: &toml::Value) -> Option<Self> {
        v.as_bool().or_else(|| v.as_str().and_then(Self::from_text))
    }
    fn from_text(s: &str) -> Option<Self> {
        match s {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        }
    }
}

impl FromConfig for u32 {
    const EXPECTED: &'static str = "a whole number";
    fn from_toml(v: &toml::Value) -> Option<Self> {
        match v {
            toml::Value::Integer(i) => u32::try_from(*i).ok(),
            toml::Value::String(s) => Self::from_text(s),
            _ => None,
        }
    }
    fn from_text(s: &str) -> Option<Self> {
        s.trim().parse().ok()
    }
}

/// A count: at most `u32::MAX`, far more than any listener can hold, and a bound that keeps
/// every count valid for the semaphores it sizes.
impl FromConfig for usize {
    const EXPECTED: &'static str = "a whole number up to 4294967295";
    fn from_toml(v: &toml::Value) -> Option<Self> {
        u32::from_toml(v).and_then(|n| usize::try_from(n).ok())
    }
    fn from_text(s: &str) -> Option<Self> {
        u32::from_text(s).and_then(|n| usize::try_from(n).ok())
    }
}

/// A list of strings: a TOML array, or comma-separated override text (empty text is the empty
/// list).
impl FromConfig for Vec<String> {
    const EXPECTED: &'static str = "a list of strings";
    fn from_toml(v: &toml::Value) -> Option<Self> {
        v.as_array()?
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect()
    }
    fn from_text(s: &str) -> Option<Self> {
        Some(
            s.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }
}

impl FromConfig for SocketAddr {
    const EXPECTED: &'static str = "an address like 0.0.0.0:8443";
    fn from_text(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

/// A duration written with a unit: `500ms`, `30s`, `5m`, `1h`.
impl FromConfig for Duration {
    const EXPECTED: &'static str = "a duration with a unit, like 500ms, 30s, 5m or 1h";
    fn from_text(s: &str) -> Option<Self> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit())?;
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().ok()?;
        match unit.trim() {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            _ => None,
        }
    }
}

/// A size in bytes written with a unit: `512B`, `96KiB`, `10MiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub usize);

impl FromConfig for ByteSize {
    const EXPECTED: &'static str = "a size with a unit, like 512B, 96KiB or 10MiB";
    fn from_text(s: &str) -> Option<Self> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit())?;
        let (num, unit) = s.split_at(split);
        let n: usize = num.parse().ok()?;
        let mult = match unit.trim() {
            "B" => 1,
            "KiB" => 1024,
            "MiB" => 1024 * 1024,
            _ => return None,
        };
        n.checked_mul(mult).map(ByteSize)
    }
}

/// Reads keys from a table, remembering which were used, where overrides came from, and every
/// error found.
pub struct Reader {
    overrides: BTreeMap<String, (String, String)>,
    used_paths: BTreeSet<String>,
    errors: Vec<String>,
}

impl Reader {
    /// `env`: variables starting with [`ENV_PREFIX`] (their names are matched to key paths);
    /// `flags`: (key path, value, flag name), applied after env so they win.
    pub fn new(
        env: impl IntoIterator<Item = (String, String)>,
        flags: Vec<(&str, String, &str)>,
    ) -> Self {
        let mut overrides = BTreeMap::new();
        for (name, value) in env {
            if name.starts_with(ENV_PREFIX) {
                overrides.insert(
                    name.clone(),
                    (value, format!("environment variable {name}")),
                );
            }
        }
        for (path, value, flag) in flags {
            overrides.insert(env_name(path), (value, format!("flag {flag}")));
        }
        Self {
            overrides,
            used_paths: BTreeSet::new(),
            errors: Vec::new(),
        }
    }

    /// Records a problem with a key.
    pub fn error(&mut self, path: &str, message: impl std::fmt::Display) {
        self.errors.push(format!("{path}: {message}"));
    }

    /// Reads `key` of `table` (whose path is `prefix`), or the default. The key is removed from
    /// the table so leftovers can be reported as unknown.
    pub fn take<T: FromConfig>(
        &mut self,
        table: &mut toml::Table,
        prefix: &str,
        key: &str,
        default: T,
    ) -> T {
        self.take_valid(table, prefix, key, default, |_| Ok(()))
    }

    /// Like [`Reader::take`], and a value that `valid` refuses is an error naming the key and
    /// where the value came from (the default is not checked: it is the libraries' own).
    pub fn take_valid<T: FromConfig>(
        &mut self,
        table: &mut toml::Table,
        prefix: &str,
        key: &str,
        default: T,
        valid: impl Fn(&T) -> Result<(), String>,
    ) -> T {
        let path = join(prefix, key);
        self.used_paths.insert(path.clone());
        let from_file = table.remove(key);
        let (value, source) =
            if let Some((text, source)) = self.overrides.get(&env_name(&path)).cloned() {
                match T::from_text(&text) {
                    Some(v) => (v, format!("{source} is '{text}'")),
                    None => {
                        self.error(
                            &path,
                            format!("{source} is '{text}', expected {}", T::EXPECTED),
                        );
                        return default;
                    }
                }
            } else {
                match from_file {
                    None => return default,
                    Some(v) => match T::from_toml(&v) {
                        Some(parsed) => (parsed, format!("is {v}")),
                        None => {
                            self.error(&path, format!("is {v}, expected {}", T::EXPECTED));
                            return default;
                        }
                    },
                }
            };
        match valid(&value) {
            Ok(()) => value,
            Err(why) => {
                self.error(&path, format!("{source}: {why}"));
                default
            }
        }
    }

    /// Takes a sub-table (absent = empty).
    pub fn table(&mut self, table: &mut toml::Table, prefix: &str, key: &str) -> toml::Table {
        match table.remove(key) {
            None => toml::Table::new(),
            Some(toml::Value::Table(t)) => t,
            Some(other) => {
                self.error(&join(prefix, key), format!("is {other}, expected a table"));
                toml::Table::new()
            }
        }
    }

    /// Takes an array of tables (`[[key]]`; absent = empty).
    pub fn tables(&mut self, table: &mut toml::Table, prefix: &str, key: &str) -> Vec<toml::Table> {
        let path = join(prefix, key);
        match table.remove(key) {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .filter_map(|(i, item)| match item {
                    toml::Value::Table(t) => Some(t),
                    other => {
                        self.error(
                            &format!("{path}[{i}]"),
                            format!("is {other}, expected a table"),
                        );
                        None
                    }
                })
                .collect(),
            Some(other) => {
                self.error(&path, format!("is {other}, expected an array of tables"));
                Vec::new()
            }
        }
    }

    /// Reports every key left in `table` as unknown.
    pub fn finish_table(&mut self, table: toml::Table, prefix: &str) {
        for key in table.keys() {
            self.error(&join(prefix, key), "unknown key");
        }
    }

    /// Reports overrides that name no key, and returns every error found.
    pub fn finish(mut self) -> Vec<String> {
        let known: BTreeSet<String> = self.used_paths.iter().map(|p| env_name(p)).collect();
        let unknown: Vec<_> = self
            .overrides
            .iter()
            .filter(|(name, _)| !known.contains(*name))
            .map(|(_, (_, src))| src.clone())
            .collect();
        for source in unknown {
            self.errors
                .push(format!("{source}: names no configuration key"));
        }
        self.errors
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// `api.max_connections` → `DPSD_API_MAX_CONNECTIONS`.
pub fn env_name(path: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        path.replace('.', "_").to_ascii_uppercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(Duration::from_text("30s"), Some(Duration::from_secs(30)));
        assert_eq!(
            Duration::from_text("250ms"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(Duration::from_text("2m"), Some(Duration::from_secs(120)));
        assert_eq!(Duration::from_text("30"), None, "a unit is required");
        assert_eq!(ByteSize::from_text("96KiB"), Some(ByteSize(96 * 1024)));
        assert_eq!(ByteSize::from_text("1 MiB"), Some(ByteSize(1024 * 1024)));
        assert_eq!(ByteSize::from_text("12kb"), None);
    }
}
