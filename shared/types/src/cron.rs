//! CRON expressions for graph triggers (spec §10), parsed with `croner` but
//! following croniter's dialect, which is what Exosphere validates with.
//!
//! Accepted:
//! * standard 5-field expressions (minute hour day-of-month month
//!   day-of-week), with names (`JAN`, `MON-FRI`), ranges, lists, steps
//!   (`*/5`, `1-10/2`, `10/5`), `?` (alone, in the day fields), `L` in the
//!   day-of-month field, `n#k` and `Ln` (last weekday `n`) in the day-of-week
//!   field;
//! * croniter's 6-field form where the 6th field is **seconds**
//!   (`"* * * * * 30"`) and 7-field form whose 7th field is the year
//!   (1970–2099);
//! * the aliases `@hourly`, `@daily`, `@midnight`, `@weekly`, `@monthly`,
//!   `@yearly` and `@annually` (the whole expression, case-insensitive).
//!
//! Rejected: `H`/`R` (hashed and random values), `W`, croner's `+`
//! modifier, out-of-range values and wrong field counts. Day-of-month and
//! day-of-week are combined with OR (Vixie semantics) when both are
//! restricted.
//!
//! Times are UTC (the container's local time in upstream deployments)
//! unless the trigger names an IANA time zone ([`CronSpec`]): then the
//! expression is read on that zone's wall clock, with croner's daylight
//! saving rules (those of the Open Cron Pattern Specification): a job at a
//! fixed time that falls in a spring-forward gap runs at the first instant
//! after the gap; a fixed-time job in a fall-back overlap runs once, at the
//! earlier instant; an interval job (`*/30 * * * *`, a wildcard hour) runs
//! at every instant the wall clock shows, both passes of the overlap
//! included.

use chrono::{DateTime, TimeZone, Utc};
pub use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// Why an expression was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The expression is not valid cron syntax (croniter's `is_valid` would
    /// be false). Rendered as the 422 message text.
    #[error("Invalid cron expression")]
    Invalid {
        /// The rejected expression.
        expression: String,
        /// A human-readable reason, for logs.
        reason: String,
    },
    /// The expression is syntactically valid but can never fire (e.g.
    /// `0 0 31 2 *`). croniter raises this from `get_next`.
    #[error("failed to find next date")]
    NeverFires {
        /// The expression.
        expression: String,
    },
}

/// A parsed, schedulable cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSchedule {
    expression: String,
    cron: Cron,
}

impl CronSchedule {
    /// Parses `expr` in croniter's dialect (see the module docs). An
    /// expression that parses but has no occurrence at all gives
    /// [`Error::NeverFires`].
    pub fn parse(expr: &str) -> Result<CronSchedule, Error> {
        let cron = parse_syntax(expr)?;
        // Search from the start of croniter's year range: a pattern without
        // any occurrence from there on never fires.
        let origin = Utc
            .with_ymd_and_hms(1970, 1, 1, 0, 0, 0)
            .single()
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        if cron.find_next_occurrence(&origin, true).is_err() {
            return Err(Error::NeverFires {
                expression: expr.to_owned(),
            });
        }
        Ok(CronSchedule {
            expression: expr.to_owned(),
            cron,
        })
    }

    /// The expression as given.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The first occurrence strictly after `t` (sub-second parts of `t` are
    /// ignored, as croniter does), or `None` when there is none (e.g. the
    /// year field lies in the past). Callers that need croniter's error text
    /// should report `None` as "failed to find next date".
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let next = self.cron.find_next_occurrence(&t, false).ok()?;
        (next > t).then_some(next)
    }

    /// The first occurrence strictly after `t` on the wall clock of `zone`
    /// (see the module docs for daylight saving changes).
    pub fn next_after_in(&self, t: DateTime<Utc>, zone: Tz) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&zone);
        let next = self.cron.find_next_occurrence(&local, false).ok()?;
        let next = next.with_timezone(&Utc);
        (next > t).then_some(next)
    }

    /// Occurrences strictly after `after` up to and including `until`, in
    /// order, at most `limit` of them (the catch-up loop of spec §10).
    pub fn occurrences_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut cursor = after;
        while out.len() < limit {
            match self.next_after(cursor) {
                Some(next) if next <= until => {
                    out.push(next);
                    cursor = next;
                }
                _ => break,
            }
        }
        out
    }
}

/// Mirrors croniter's `is_valid`: `true` when the syntax is accepted, even if
/// the expression never fires (that is only detected when computing the next
/// time, see [`Error::NeverFires`]).
pub fn is_valid(expr: &str) -> bool {
    parse_syntax(expr).is_ok()
}

const DOM: usize = 2;
const MONTH: usize = 3;
const DOW: usize = 4;
const SECOND: usize = 5;
const YEAR: usize = 6;

/// Checks croniter's rules that croner does not enforce, then translates the
/// expression to croner's field order and parses it.
fn parse_syntax(expr: &str) -> Result<Cron, Error> {
    let invalid = |reason: String| Error::Invalid {
        expression: expr.to_owned(),
        reason,
    };
    let lowered = expr.to_ascii_lowercase();
    let resolved = match lowered.as_str() {
        "@midnight" | "@daily" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        "@weekly" => "0 0 * * 0",
        "@monthly" => "0 0 1 * *",
        "@yearly" | "@annually" => "0 0 1 1 *",
        other => other,
    };
    let mut fields: Vec<String> = resolved.split_whitespace().map(str::to_owned).collect();
    if !(5..=7).contains(&fields.len()) {
        return Err(invalid(format!(
            "expected 5, 6 or 7 fields, found {}",
            fields.len()
        )));
    }
    for (index, field) in fields.iter_mut().enumerate() {
        check_field(index, field).map_err(&invalid)?;
    }
    // croniter order: minute hour dom month dow [second [year]]
    // croner order:   [second] minute hour dom month dow [year]
    let mut croner_fields: Vec<&str> = Vec::with_capacity(7);
    if let Some(second) = fields.get(SECOND) {
        croner_fields.push(second);
    }
    croner_fields.extend(fields.iter().take(5).map(String::as_str));
    if let Some(year) = fields.get(YEAR) {
        croner_fields.push(year);
    }
    let pattern = croner_fields.join(" ");
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Optional)
        .sloppy_ranges(true)
        .build()
        .parse(&pattern)
        .map_err(|e| invalid(e.to_string()))
}

/// Validates one (lower-cased) croniter field and rewrites croniter-only
/// syntax into croner's (`?` → `*`, day-of-week `Ln` → `n#L`).
fn check_field(index: usize, field: &mut String) -> Result<(), String> {
    if field.contains('?') {
        if field != "?" {
            return Err("'?' can not be used with other characters".into());
        }
        if index != DOM && index != DOW {
            return Err("'?' can only be used in day_of_month or day_of_week".into());
        }
        *field = "*".into();
        return Ok(());
    }
    if let Some(c) = field
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '*' | '/' | ',' | '-' | '#')))
    {
        return Err(format!("unsupported character '{c}'"));
    }
    let names: &[&str] = match index {
        MONTH => &MONTH_NAMES,
        DOW => &WEEKDAY_NAMES,
        _ => &[],
    };
    let mut elements = Vec::new();
    for element in field.split(',') {
        if element.is_empty() || element.starts_with('/') || element.starts_with('-') {
            return Err(format!("invalid element '{element}'"));
        }
        let mut rest = element.to_owned();
        for name in names {
            rest = rest.replace(name, "");
        }
        if rest.chars().any(|c| c.is_ascii_alphabetic()) {
            match index {
                DOM if element == "l" => {}
                DOW if element.starts_with('l')
                    && element.len() > 1
                    && element[1..].chars().all(|c| c.is_ascii_digit()) =>
                {
                    elements.push(format!("{}#L", &element[1..]));
                    continue;
                }
                _ => return Err(format!("invalid element '{element}'")),
            }
        }
        if let Some((day, nth)) = element.split_once('#') {
            if index != DOW {
                return Err("'#' is only allowed in day_of_week".into());
            }
            if day.is_empty() || !matches!(nth.parse::<u8>(), Ok(1..=5)) {
                return Err(format!("invalid day_of_week value: '{element}'"));
            }
        }
        if index == YEAR {
            check_year_element(element)?;
        }
        elements.push(element.to_owned());
    }
    *field = elements.join(",");
    Ok(())
}

/// Month names accepted in the month field.
const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// Weekday names accepted in the day-of-week field.
const WEEKDAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// croniter accepts years 1970 to 2099 only.
fn check_year_element(element: &str) -> Result<(), String> {
    let range = element.split('/').next().unwrap_or_default();
    for bound in range.split('-') {
        if bound == "*" {
            continue;
        }
        match bound.parse::<u32>() {
            Ok(1970..=2099) => {}
            _ => return Err(format!("year '{bound}' is out of range (1970-2099)")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn accepts_spec_examples() {
        for expr in [
            "* * * * *",
            "*/5 * * * *",
            "0 9 * * MON-FRI",
            "0 0 1 JAN *",
            "0 0 L * *",
            "0 0 * * 5#2",
            "0 0 * * L5",
            "0 0 * * fri#1",
            "0 0 ? * 1",
            "10/5 * * * *",
            "* * * * * 30",
            "* * * * * * 2030",
            "@hourly",
            "@daily",
            "@weekly",
            "@monthly",
            "@yearly",
            "@annually",
            "@midnight",
            "@DAILY",
            "0 0 * * 7",
            "0 0 * * thu",
            "0 0 1 mar,apr *",
        ] {
            assert!(is_valid(expr), "{expr}");
            assert!(CronSchedule::parse(expr).is_ok(), "{expr}");
        }
    }

    #[test]
    fn rejects_invalid_expressions() {
        for expr in [
            "",
            "* * * *",
            "* * * * * * * *",
            "H * * * *",
            "H(0-5) * * * *",
            "R * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 32 * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "* * 15W * *",
            "0 0 1 * +MON",
            "/5 * * * *",
            "-1 * * * *",
            "* * * * * 60",
            "* * * * * * 2100",
            "* * * * * * 1969",
            "@reboot",
            " @daily",
            "x * * * *",
            "1? * * * *",
            "? * * * *",
            "0 0 * * 5#6",
            "L * * * *",
            "0 0 * * 5L",
            "0 0 * * 5#L",
            "jan * * * *",
            "0 0 mon * *",
            "0 0 * mon *",
            "0 0 1 * #2",
        ] {
            assert!(!is_valid(expr), "{expr}");
            assert!(
                matches!(CronSchedule::parse(expr), Err(Error::Invalid { .. })),
                "{expr}"
            );
        }
    }

    #[test]
    fn never_firing_expression_is_reported() {
        assert!(is_valid("0 0 31 2 *"));
        let err = CronSchedule::parse("0 0 31 2 *").unwrap_err();
        assert!(matches!(err, Error::NeverFires { .. }));
        assert_eq!(err.to_string(), "failed to find next date");
        assert_eq!(
            Error::Invalid {
                expression: "x".into(),
                reason: "y".into()
            }
            .to_string(),
            "Invalid cron expression"
        );
    }

    #[test]
    fn next_after_is_strictly_after() {
        let s = CronSchedule::parse("* * * * *").unwrap();
        assert_eq!(
            s.next_after(at(2025, 1, 1, 10, 0, 0)),
            Some(at(2025, 1, 1, 10, 1, 0))
        );
        assert_eq!(
            s.next_after(at(2025, 1, 1, 10, 0, 30)),
            Some(at(2025, 1, 1, 10, 1, 0))
        );
        let s = CronSchedule::parse("0 * * * *").unwrap();
        assert_eq!(
            s.next_after(at(2025, 1, 1, 10, 0, 0)),
            Some(at(2025, 1, 1, 11, 0, 0))
        );
        // Sub-second parts are ignored, the result is still strictly after.
        let s = CronSchedule::parse("* * * * * *").unwrap();
        let t = at(2025, 1, 1, 10, 0, 0) + chrono::Duration::milliseconds(500);
        assert_eq!(s.next_after(t), Some(at(2025, 1, 1, 10, 0, 1)));
    }

    #[test]
    fn sixth_field_is_seconds() {
        let s = CronSchedule::parse("* * * * * 30").unwrap();
        assert_eq!(
            s.next_after(at(2025, 1, 1, 10, 0, 0)),
            Some(at(2025, 1, 1, 10, 0, 30))
        );
        assert_eq!(
            s.next_after(at(2025, 1, 1, 10, 0, 30)),
            Some(at(2025, 1, 1, 10, 1, 30))
        );
        let s = CronSchedule::parse("5 10 * * * 15").unwrap();
        assert_eq!(
            s.next_after(at(2025, 1, 1, 0, 0, 0)),
            Some(at(2025, 1, 1, 10, 5, 15))
        );
    }

    #[test]
    fn seventh_field_is_the_year() {
        let s = CronSchedule::parse("0 0 1 1 * 0 2030").unwrap();
        assert_eq!(
            s.next_after(at(2025, 6, 1, 0, 0, 0)),
            Some(at(2030, 1, 1, 0, 0, 0))
        );
        assert_eq!(s.next_after(at(2030, 1, 1, 0, 0, 0)), None);
    }

    #[test]
    fn names_aliases_and_specials_fire_when_expected() {
        // 2025-01-01 is a Wednesday.
        let start = at(2025, 1, 1, 0, 0, 0);
        let next = |e: &str| CronSchedule::parse(e).unwrap().next_after(start).unwrap();
        assert_eq!(next("0 9 * * MON-FRI"), at(2025, 1, 1, 9, 0, 0));
        assert_eq!(next("0 9 * * SAT"), at(2025, 1, 4, 9, 0, 0));
        assert_eq!(next("0 0 1 FEB *"), at(2025, 2, 1, 0, 0, 0));
        assert_eq!(next("0 0 L * *"), at(2025, 1, 31, 0, 0, 0));
        assert_eq!(next("0 0 * * 5#2"), at(2025, 1, 10, 0, 0, 0));
        assert_eq!(next("0 0 * * L5"), at(2025, 1, 31, 0, 0, 0));
        assert_eq!(next("@hourly"), at(2025, 1, 1, 1, 0, 0));
        assert_eq!(next("@daily"), at(2025, 1, 2, 0, 0, 0));
        assert_eq!(next("@midnight"), at(2025, 1, 2, 0, 0, 0));
        assert_eq!(next("@weekly"), at(2025, 1, 5, 0, 0, 0));
        assert_eq!(next("@monthly"), at(2025, 2, 1, 0, 0, 0));
        assert_eq!(next("@yearly"), at(2026, 1, 1, 0, 0, 0));
        assert_eq!(next("10/20 * * * *"), at(2025, 1, 1, 0, 10, 0));
    }

    #[test]
    fn day_of_month_and_day_of_week_are_ored() {
        // The 15th, or any Friday. 2025-01-03 is a Friday.
        let s = CronSchedule::parse("0 0 15 * FRI").unwrap();
        assert_eq!(
            s.next_after(at(2025, 1, 1, 0, 0, 0)),
            Some(at(2025, 1, 3, 0, 0, 0))
        );
        assert_eq!(
            s.next_after(at(2025, 1, 10, 0, 0, 0)),
            Some(at(2025, 1, 15, 0, 0, 0))
        );
    }

    #[test]
    fn occurrences_between_catches_up() {
        let s = CronSchedule::parse("*/15 * * * *").unwrap();
        let got = s.occurrences_between(at(2025, 1, 1, 10, 0, 0), at(2025, 1, 1, 10, 45, 0), 100);
        assert_eq!(
            got,
            vec![
                at(2025, 1, 1, 10, 15, 0),
                at(2025, 1, 1, 10, 30, 0),
                at(2025, 1, 1, 10, 45, 0)
            ]
        );
        assert_eq!(
            s.occurrences_between(at(2025, 1, 1, 10, 0, 0), at(2025, 1, 1, 11, 0, 0), 2)
                .len(),
            2
        );
        assert_eq!(s.expression(), "*/15 * * * *");
    }
}

/// What a CRON schedule does about the occurrences it missed while no
/// `trigger` replica ran (an occurrence is missed when it is claimed more
/// than [`MISSED_AFTER_MS`] after its time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CatchUp {
    /// Start nothing for missed occurrences; continue with the next one.
    Skip,
    /// Start one run for all of them (the first missed), then continue
    /// with the next one (the default).
    Once,
    /// Start a run for each missed occurrence, at most `max_catch_up` (the
    /// latest ones), then continue.
    All,
}

impl CatchUp {
    /// The JSON and database string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Skip => "SKIP",
            Self::Once => "ONCE",
            Self::All => "ALL",
        }
    }
}

/// An occurrence claimed later than this after its time was missed.
pub const MISSED_AFTER_MS: i64 = 60_000;
/// Default most runs `ALL` starts for the occurrences of one downtime.
pub const DEFAULT_MAX_CATCH_UP: u32 = 10;
/// Largest `max_catch_up` accepted.
pub const MAX_CATCH_UP_LIMIT: u32 = 1000;

/// A CRON trigger's schedule: expression, time zone and catch-up policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSpec {
    /// The parsed expression.
    pub schedule: CronSchedule,
    /// The zone whose wall clock the expression reads (UTC by default).
    pub zone: Tz,
    /// What missed occurrences start.
    pub catch_up: CatchUp,
    /// Most runs `CatchUp::All` starts for one downtime.
    pub max_catch_up: u32,
}

/// Why a CRON trigger's value was refused, with the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// The `value` key at fault.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

impl CronSpec {
    /// Reads a CRON trigger's `value`: `expression` (required),
    /// `timezone` (an IANA name, default `UTC`), `catch_up` (`SKIP`,
    /// `ONCE` (default), `ALL`) and `max_catch_up` (1 to
    /// [`MAX_CATCH_UP_LIMIT`], default [`DEFAULT_MAX_CATCH_UP`]).
    pub fn from_value(
        value: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, SpecError> {
        let err = |field, message: String| SpecError { field, message };
        let expression = value
            .get("expression")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| err("expression", "Field required".into()))?;
        let schedule = CronSchedule::parse(expression)
            .map_err(|_| err("expression", "Invalid cron expression".into()))?;
        let zone = match value.get("timezone") {
            None | Some(serde_json::Value::Null) => Tz::UTC,
            Some(v) => {
                let name = v.as_str().unwrap_or_default();
                name.parse::<Tz>().map_err(|_| {
                    err(
                        "timezone",
                        format!("Unknown time zone {v}: use an IANA name such as \"Europe/Paris\""),
                    )
                })?
            }
        };
        let catch_up = match value.get("catch_up") {
            None | Some(serde_json::Value::Null) => CatchUp::Once,
            Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
                err(
                    "catch_up",
                    format!("catch_up is one of \"SKIP\", \"ONCE\", \"ALL\", not {v}"),
                )
            })?,
        };
        let max_catch_up = match value.get("max_catch_up") {
            None | Some(serde_json::Value::Null) => DEFAULT_MAX_CATCH_UP,
            Some(v) => v
                .as_u64()
                .filter(|n| (1..=u64::from(MAX_CATCH_UP_LIMIT)).contains(n))
                .map(|n| n as u32)
                .ok_or_else(|| {
                    err(
                        "max_catch_up",
                        format!(
                            "max_catch_up is an integer from 1 to {MAX_CATCH_UP_LIMIT}, not {v}"
                        ),
                    )
                })?,
        };
        Ok(Self {
            schedule,
            zone,
            catch_up,
            max_catch_up,
        })
    }

    /// The schedule's key: the expression alone in UTC (what Exosphere
    /// stores), else `CRON_TZ=<zone> <expression>`. Occurrences are stored
    /// and deduplicated under it, so one expression in two zones is two
    /// schedules.
    pub fn key(&self) -> String {
        schedule_key(self.schedule.expression(), self.zone)
    }

    /// The first occurrence strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.next_after_in(t, self.zone)
    }

    /// Up to `n` occurrences strictly after `after` and at most `until`,
    /// the latest ones, newest first.
    pub fn latest_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        n: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut cursor = until.with_timezone(&self.zone);
        let mut inclusive = true;
        while out.len() < n {
            let Ok(prev) = self
                .schedule
                .cron
                .find_previous_occurrence(&cursor, inclusive)
            else {
                break;
            };
            let utc = prev.with_timezone(&Utc);
            if utc <= after || utc > until {
                break;
            }
            out.push(utc);
            cursor = prev;
            inclusive = false;
        }
        out
    }

    /// The next `n` occurrences after `t`.
    pub fn upcoming(&self, t: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut cursor = t;
        while out.len() < n {
            match self.next_after(cursor) {
                Some(next) => {
                    out.push(next);
                    cursor = next;
                }
                None => break,
            }
        }
        out
    }
}

impl CronSpec {
    /// The schedule a key names, with the default policy (for an
    /// occurrence whose trigger is no longer declared).
    pub fn from_key(key: &str) -> Option<Self> {
        let (zone, expression) = match key.strip_prefix("CRON_TZ=") {
            Some(rest) => {
                let (zone, expression) = rest.split_once(' ')?;
                (zone.parse::<Tz>().ok()?, expression)
            }
            None => (Tz::UTC, key),
        };
        Some(Self {
            schedule: CronSchedule::parse(expression).ok()?,
            zone,
            catch_up: CatchUp::Once,
            max_catch_up: DEFAULT_MAX_CATCH_UP,
        })
    }
}

/// What firing an occurrence does (see [`CronSpec::firing`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firing {
    /// Whether it starts its run.
    pub start: bool,
    /// Why it starts nothing, when it does not.
    pub skipped: Option<String>,
    /// The time of the schedule's next occurrence (none when it has no more).
    pub next: Option<DateTime<Utc>>,
}

impl CronSpec {
    /// What the occurrence due at `at` does when claimed at `now`. On time
    /// (claimed at most [`MISSED_AFTER_MS`] late) it starts its run and the
    /// schedule continues after `now`. Missed: `SKIP` starts nothing and
    /// continues after `now`; `ONCE` starts it and continues after `now`;
    /// `ALL` starts it and continues after `at` (so each missed occurrence
    /// is claimed in turn), unless `max_catch_up` later occurrences were
    /// missed too: then it starts nothing and continues at the oldest of
    /// the latest `max_catch_up`.
    pub fn firing(&self, at: DateTime<Utc>, now: DateTime<Utc>) -> Firing {
        let late_ms = (now - at).num_milliseconds();
        let start = |next| Firing {
            start: true,
            skipped: None,
            next,
        };
        let skip = |reason: String, next| Firing {
            start: false,
            skipped: Some(reason),
            next,
        };
        if late_ms <= MISSED_AFTER_MS {
            return start(self.next_after(now));
        }
        match self.catch_up {
            CatchUp::Skip => skip(
                format!("missed by {} s (catch_up SKIP)", late_ms / 1000),
                self.next_after(now),
            ),
            CatchUp::Once => start(self.next_after(now)),
            CatchUp::All => {
                let max = self.max_catch_up as usize;
                let latest = self.latest_between(at, now, max);
                if latest.len() >= max {
                    skip(
                        format!("missed; catch_up ALL starts the latest {max} only"),
                        latest.last().copied(),
                    )
                } else {
                    start(self.next_after(at))
                }
            }
        }
    }
}

/// The key of `expression` on the wall clock of `zone` (see
/// [`CronSpec::key`]).
pub fn schedule_key(expression: &str, zone: Tz) -> String {
    if zone == Tz::UTC {
        expression.to_string()
    } else {
        format!("CRON_TZ={} {expression}", zone.name())
    }
}
