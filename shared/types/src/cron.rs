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
//! Times are UTC (the container's local time in upstream deployments).

use chrono::{DateTime, TimeZone, Utc};
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
