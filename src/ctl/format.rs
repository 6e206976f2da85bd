//! The pieces of the text output: aligned tables, and values as people read them (money
//! with its currency, UTC times, durations in their largest units, enum names with what
//! they mean). Anything from the server is kept on one line.

use chrono::DateTime;

use crate::pb;

/// Rows of cells printed in columns as wide as their widest cell, two spaces apart.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn headless() -> Self {
        Table { rows: Vec::new() }
    }

    /// Adds a row; control characters from the server are blanked so rows stay one line.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| one_line(c)).collect());
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = Vec::new();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                let w = cell.chars().count();
                match widths.get_mut(i) {
                    Some(cur) => *cur = (*cur).max(w),
                    None => widths.push(w),
                }
            }
        }
        let mut s = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (cell, width) in row.iter().zip(&widths) {
                let pad = width - cell.chars().count();
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad + 2));
            }
            s.push_str(line.trim_end());
            s.push('\n');
        }
        s
    }
}

/// `s` with control characters (newlines included) blanked, so it prints on one line.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|ch| if ch.is_control() { ' ' } else { ch })
        .collect()
}

/// "admitted yes", or "admitted no" with the reason explained.
pub fn admitted_rows(admitted: bool, reason: i32) -> Vec<(&'static str, String)> {
    if admitted {
        return vec![("admitted", "yes".into())];
    }
    vec![("admitted", "no".into()), ("reason", deny_reason(reason))]
}

/// A deny reason's name with what it means.
pub fn deny_reason(reason: i32) -> String {
    let why = match pb::DenyReason::try_from(reason) {
        Ok(pb::DenyReason::Overdue) => "the balance is below zero; top up first",
        Ok(pb::DenyReason::NoEntitlement) => "no valid grant covers it and the balance is zero",
        Ok(pb::DenyReason::InsufficientFunds) => "grants and balance cannot pay for it",
        Ok(pb::DenyReason::LedgerUnavailable) => "ledger unreachable and local lease spent",
        _ => "",
    };
    explained(enum_name(reason, pb::DenyReason::as_str_name), why)
}

/// Why a session stopped: the cause's name with what it means.
pub fn stop_cause(cause: i32) -> String {
    let why = match pb::SessionStop::try_from(cause) {
        Ok(pb::SessionStop::Requested) => "stop-session was called",
        Ok(pb::SessionStop::Idle) => "no busy heartbeat within the idle timeout",
        Ok(pb::SessionStop::InsufficientFunds) => "the next hour could not be paid for",
        _ => "",
    };
    explained(enum_name(cause, pb::SessionStop::as_str_name), why)
}

fn explained(name: String, why: &str) -> String {
    if why.is_empty() {
        name
    } else {
        format!("{name} ({why})")
    }
}

pub fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

/// The wire name of an enum value; "-" when unset, "?N" for a value newer than this build.
pub fn enum_name<E: TryFrom<i32>>(v: i32, name: impl Fn(&E) -> &'static str) -> String {
    match E::try_from(v) {
        Ok(_) if v == 0 => "-".to_owned(),
        Ok(e) => name(&e).to_owned(),
        Err(_) => format!("?{v}"),
    }
}

pub fn resource_name(v: i32) -> String {
    enum_name(v, pb::Resource::as_str_name)
}

pub fn fmt_money(m: &Option<pb::Money>) -> String {
    match m {
        None => "-".to_owned(),
        Some(m) if m.currency.is_empty() => m.amount.clone(),
        Some(m) => format!("{} {}", m.amount, m.currency),
    }
}

/// Milliseconds since the epoch as "2026-11-22 10:00:00" UTC; 0 (unset) as "-".
pub fn fmt_time(ms: i64) -> String {
    if ms == 0 {
        return "-".to_owned();
    }
    match DateTime::from_timestamp_millis(ms) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        None => format!("{ms} ms"),
    }
}

/// `fmt_time` with " UTC" after it (but "-" when unset).
pub fn fmt_time_utc(ms: i64) -> String {
    match fmt_time(ms) {
        t if ms == 0 => t,
        t => format!("{t} UTC"),
    }
}

/// Milliseconds as "20m", "1h30m" or "1m2s500ms"; "0s" when zero or less.
pub fn fmt_duration_ms(ms: i64) -> String {
    if ms <= 0 {
        return "0s".to_owned();
    }
    let mut rest = ms;
    let mut s = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if rest >= size {
            s.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    if rest > 0 {
        s.push_str(&format!("{rest}ms"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_keeps_rows_on_one_line() {
        let mut t = Table::new(&["SKU", "PRICE", "UNIT"]);
        t.row(vec![
            "gpu.shared.t4".into(),
            "0.0003 CNY".into(),
            "second".into(),
        ]);
        t.row(vec!["x\ny".into(), "9.9 CNY".into(), "".into()]);
        let want = "SKU            PRICE       UNIT\n\
                    gpu.shared.t4  0.0003 CNY  second\n\
                    x y            9.9 CNY\n";
        assert_eq!(t.render(), want);
    }

    #[test]
    fn times_print_in_utc() {
        assert_eq!(fmt_time(1_795_341_600_000), "2026-11-22 10:00:00");
        assert_eq!(fmt_time_utc(1_795_341_600_000), "2026-11-22 10:00:00 UTC");
        assert_eq!(fmt_time(0), "-");
        assert_eq!(fmt_time_utc(0), "-");
        assert_eq!(fmt_time(i64::MAX), format!("{} ms", i64::MAX));
    }

    #[test]
    fn denial_names_and_explains_the_reason() {
        let rows = admitted_rows(false, pb::DenyReason::Overdue as i32);
        assert_eq!(rows[0], ("admitted", "no".to_owned()));
        assert!(
            rows[1].1.starts_with("OVERDUE (the balance is below zero"),
            "{rows:?}"
        );
        assert_eq!(admitted_rows(true, 0), [("admitted", "yes".to_owned())]);
    }

    #[test]
    fn session_outcomes_name_and_explain_causes() {
        assert_eq!(
            stop_cause(pb::SessionStop::Idle as i32),
            "SESSION_STOP_IDLE (no busy heartbeat within the idle timeout)"
        );
        assert_eq!(stop_cause(0), "-");
        assert_eq!(stop_cause(9), "?9");
        assert_eq!(
            deny_reason(pb::DenyReason::InsufficientFunds as i32),
            "INSUFFICIENT_FUNDS (grants and balance cannot pay for it)"
        );
    }

    #[test]
    fn durations_print_in_the_largest_units() {
        let cases = [
            (1_200_000, "20m"),
            (5_400_000, "1h30m"),
            (62_500, "1m2s500ms"),
            (86_400_000, "1d"),
            (250, "250ms"),
            (0, "0s"),
            (-3, "0s"),
        ];
        for (ms, want) in cases {
            assert_eq!(fmt_duration_ms(ms), want, "{ms}");
        }
    }
}
