//! The ratios against the DESIGN.md section 5 targets, and the outputs: markdown tables
//! and a hand-drawn SVG latency chart (percentile on a log axis, latency on a log axis).

use std::fmt::Write as _;

use serde::Serialize;

use crate::out::{esc, svg_open};
use crate::stats::{ScenarioResult, Summary};

/// One comparison against a target.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// The target, as DESIGN.md section 5 states it.
    pub target: String,
    /// Where it was compared (client count, streams).
    pub at: String,
    pub quotad: String,
    pub baseline: String,
    /// quotad / baseline (for latency: lower is better).
    pub ratio: f64,
    pub needed: String,
    pub met: bool,
    /// How far above or below the target, in words.
    pub by: String,
}

fn find<'a>(
    rs: &'a [ScenarioResult],
    target: &str,
    scenario: &str,
    clients: usize,
) -> Option<&'a ScenarioResult> {
    rs.iter()
        .find(|r| r.target == target && r.scenario == scenario && r.clients == clients)
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// "at least `need`x" targets.
fn at_least(ratio: f64, need: f64) -> (bool, String) {
    if ratio >= need {
        (true, format!("{:.2}x the bar", ratio / need))
    } else if ratio > 0.0 {
        (false, format!("{:.1}x short of the bar", need / ratio))
    } else {
        (false, "nothing measured".into())
    }
}

/// quotad's throughput against a baseline's at `clients`, which must be at least `bar`.
fn throughput_ratio(
    target: &str,
    clients: usize,
    bar: f64,
    quotad: String,
    (q_ops_per_s, base_ops_per_s): (f64, f64),
    baseline: String,
) -> Ratio {
    let ratio = if base_ops_per_s > 0.0 {
        q_ops_per_s / base_ops_per_s
    } else {
        0.0
    };
    let (met, by) = at_least(ratio, bar);
    Ratio {
        target: target.into(),
        at: format!("{clients} client{}", if clients == 1 { "" } else { "s" }),
        quotad,
        baseline,
        ratio: round(ratio, 4),
        needed: format!(">= {bar}x"),
        met,
        by,
    }
}

pub fn ratios(rs: &[ScenarioResult], concurrency: &[usize], pg_clients: &[usize]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for &c in concurrency {
        if let (Some(q), Some(n)) = (
            find(rs, "quotad", "reserve_commit", c),
            find(rs, "noop", "reserve_commit", c),
        ) {
            out.push(throughput_ratio(
                "Reserve throughput >= 0.8x a no-op tonic server",
                c,
                0.8,
                format!("{:.0} Reserve+Commit pairs/s", q.ops_per_s),
                (q.ops_per_s, n.ops_per_s),
                format!("{:.0} pairs/s (no-op)", n.ops_per_s),
            ));
        }
    }
    let q1 = concurrency
        .iter()
        .min()
        .and_then(|&c| find(rs, "quotad", "reserve_commit", c).map(|r| (c, r)));
    if let (Some((c, q)), Some(r)) = (q1, find(rs, "redis", "evalsha", 1))
        && let (Some(qp), Some(rp)) = (q.lat("reserve"), r.lat("evalsha"))
    {
        let ratio = qp.p50_us / rp.p50_us;
        let met = ratio <= 1.0;
        let by = if met {
            format!("{:.2}x faster", 1.0 / ratio)
        } else {
            format!("{:.1}x slower", ratio)
        };
        out.push(Ratio {
            target: "Reserve p50 no worse than a Redis EVALSHA check-and-debit, one client".into(),
            at: format!("{c} client vs 1 client"),
            quotad: format!("p50 {} µs (Reserve)", qp.p50_us),
            baseline: format!("p50 {} µs (EVALSHA)", rp.p50_us),
            ratio: round(ratio, 3),
            needed: "<= 1.0x".into(),
            met,
            by,
        });
    }
    for &k in pg_clients {
        if let (Some(q), Some(p)) = (
            find(rs, "quotad", "reserve_commit", k),
            find(rs, "postgres", "update", k),
        ) {
            out.push(throughput_ratio(
                "Reserve throughput >= 5x a PostgreSQL single-UPDATE debit",
                k,
                5.0,
                format!("{:.0} Reserves/s (each with its Commit)", q.ops_per_s),
                (q.ops_per_s, p.ops_per_s),
                format!("{:.0} UPDATEs/s", p.ops_per_s),
            ));
        }
    }
    if let Some(s) = find(rs, "quotad", "stream_usage", 1) {
        let ratio = s.ops_per_s / 1_000_000.0;
        let (met, by) = at_least(ratio, 1.0);
        let noop = find(rs, "noop", "stream_usage", 1)
            .map(|n| format!(" (no-op server: {:.0}/s)", n.ops_per_s))
            .unwrap_or_default();
        out.push(Ratio {
            target: "StreamUsage >= 1M usage records/s on one stream".into(),
            at: "1 stream".into(),
            quotad: format!("{:.0} records/s", s.ops_per_s),
            baseline: format!("1000000 records/s{noop}"),
            ratio: round(ratio, 6),
            needed: ">= 1.0x".into(),
            met,
            by,
        });
    }
    out
}

pub fn ratio_line(r: &Ratio) -> String {
    format!(
        "ratio: {} [{}]: quotad {} vs {} = {}x (needs {}): {} ({})",
        r.target,
        r.at,
        r.quotad,
        r.baseline,
        r.ratio,
        r.needed,
        if r.met { "MET" } else { "NOT MET" },
        r.by
    )
}

pub fn ratios_markdown(rs: &[Ratio]) -> String {
    let mut s = String::new();
    s.push_str(
        "| DESIGN.md §5 target | at | quotad | baseline | ratio | needed | met? | by how much |\n",
    );
    s.push_str("|---|---|---|---|---:|---|---|---|\n");
    for r in rs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.target,
            r.at,
            r.quotad,
            r.baseline,
            r.ratio,
            r.needed,
            if r.met { "met" } else { "**not met**" },
            r.by
        );
    }
    s
}

pub fn raw_markdown(rs: &[ScenarioResult]) -> String {
    let mut s = String::new();
    s.push_str("| target | scenario | mode | clients | ops/s | op | latency of | p50 µs | p99 µs | p99.9 µs | max µs | denied | errors | CPU cores: all / bench / other | RSS MiB |\n");
    s.push_str("|---|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---|---:|\n");
    for r in rs {
        let clients = match r.rate {
            Some(rate) => format!("{} lanes @ {rate:.0}/s", r.clients),
            None => r.clients.to_string(),
        };
        let cpu = r
            .cpu
            .map(|c| {
                format!(
                    "{:.2} / {:.2} / {:.2}",
                    c.busy_cores, c.this_process_cores, c.other_cores
                )
            })
            .unwrap_or_else(|| "-".into());
        let rss = r.rss_mib.map_or("-".to_string(), |m| format!("{m:.0}"));
        let mut first = true;
        let rows: Vec<(&String, &Summary)> = r.latency.iter().collect();
        if rows.is_empty() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {clients} | {:.0} | {} | - | - | - | - | - | {} | {} | {cpu} | {rss} |",
                r.target, r.scenario, r.mode, r.ops_per_s, r.unit, r.denied, r.errors
            );
        }
        for (metric, l) in rows {
            if first {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {clients} | {:.0} | {} | {metric} | {} | {} | {} | {} | {} | {} | {cpu} | {rss} |",
                    r.target,
                    r.scenario,
                    r.mode,
                    r.ops_per_s,
                    r.unit,
                    l.p50_us,
                    l.p99_us,
                    l.p999_us,
                    l.max_us,
                    r.denied,
                    r.errors
                );
                first = false;
            } else {
                let _ = writeln!(
                    s,
                    "| | | | | | | {metric} | {} | {} | {} | {} | | | | |",
                    l.p50_us, l.p99_us, l.p999_us, l.max_us
                );
            }
        }
    }
    s
}

/// A series of the chart: label, colour, dashed, points [percentile, µs].
pub struct Series {
    pub label: String,
    pub color: &'static str,
    pub dashed: bool,
    pub p50_us: f64,
    pub points: Vec<[f64; 2]>,
}

/// The main single-client latency curves of the run.
pub fn chart_series(rs: &[ScenarioResult], one: usize) -> Vec<Series> {
    let pick = |target: &str, scenario: &str, clients: usize, metric: &str| {
        find(rs, target, scenario, clients)
            .and_then(|r| r.lat(metric))
            .map(|l| (l.p50_us, l.curve.clone()))
    };
    let specs: [(&str, &str, usize, &str, String, &'static str, bool); 6] = [
        (
            "quotad",
            "reserve_commit",
            one,
            "reserve",
            format!("quotad Reserve ({one} client)"),
            "#d62728",
            false,
        ),
        (
            "quotad",
            "reserve_commit",
            one,
            "pair",
            format!("quotad Reserve+Commit ({one} client)"),
            "#d62728",
            true,
        ),
        (
            "noop",
            "reserve_commit",
            one,
            "reserve",
            format!("no-op tonic Reserve ({one} client)"),
            "#1f77b4",
            false,
        ),
        (
            "quotad",
            "admit",
            one,
            "admit",
            format!("quotad Admit ({one} client)"),
            "#ff7f0e",
            false,
        ),
        (
            "redis",
            "evalsha",
            1,
            "evalsha",
            "Redis EVALSHA debit (1 client)".into(),
            "#2ca02c",
            false,
        ),
        (
            "postgres",
            "update",
            1,
            "update",
            "PostgreSQL UPDATE debit (1 client)".into(),
            "#9467bd",
            false,
        ),
    ];
    specs
        .into_iter()
        .filter_map(|(t, sc, c, m, label, color, dashed)| {
            pick(t, sc, c, m).map(|(p50_us, points)| Series {
                label,
                color,
                dashed,
                p50_us,
                points,
            })
        })
        .collect()
}

/// x = log10(1 / (1 - p)): 0 at p0, 1 at p90, 2 at p99 ...
fn pct_x(pct: f64) -> f64 {
    let tail = (1.0 - pct / 100.0).max(1e-9);
    -tail.log10()
}

pub fn svg(series: &[Series], title: &str, subtitle: &str) -> String {
    let (w, h) = (1040.0, 560.0);
    let (left, right, top, bottom) = (80.0, 370.0, 70.0, 60.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let x_max = 5.0;
    let all: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p[1]))
        .filter(|v| *v > 0.0)
        .collect();
    let lo = all.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = all.iter().cloned().fold(0.0, f64::max);
    let (y0, y1) = if all.is_empty() {
        (1.0, 4.0)
    } else {
        (
            lo.log10().floor(),
            hi.log10().ceil().max(lo.log10().floor() + 1.0),
        )
    };
    let px = |x: f64| left + x.min(x_max) / x_max * pw;
    let py = |us: f64| top + ph - (us.max(1e-3).log10() - y0) / (y1 - y0) * ph;
    let mut s = String::new();
    svg_open(&mut s, w, h, left, title, subtitle);
    // Grid and axes.
    for (x, label) in [
        (0.0, "p0"),
        (1.0, "p90"),
        (2.0, "p99"),
        (3.0, "p99.9"),
        (4.0, "p99.99"),
        (5.0, "p99.999"),
    ] {
        let gx = px(x);
        let _ = writeln!(
            s,
            r##"<line x1="{gx:.1}" y1="{top}" x2="{gx:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            top + ph
        );
        let _ = writeln!(
            s,
            r#"<text x="{gx:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            top + ph + 18.0
        );
    }
    let mut e = y0 as i32;
    while e <= y1 as i32 {
        let us = 10f64.powi(e);
        let gy = py(us);
        let label = if us >= 1_000_000.0 {
            format!("{} s", us / 1_000_000.0)
        } else if us >= 1_000.0 {
            format!("{} ms", us / 1_000.0)
        } else {
            format!("{us} µs")
        };
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#ddd"/>"##,
            left + pw
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"#,
            left - 8.0,
            gy + 4.0
        );
        e += 1;
    }
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile (log scale of 1/(1-p))</text>"#,
        left + pw / 2.0,
        h - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text x="20" y="{:.1}" text-anchor="middle" transform="rotate(-90 20 {:.1})">latency (log scale)</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );
    // Series.
    for (i, se) in series.iter().enumerate() {
        let pts: Vec<String> = se
            .points
            .iter()
            .map(|p| format!("{:.1},{:.1}", px(pct_x(p[0])), py(p[1])))
            .collect();
        let dash = if se.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
            se.color,
            pts.join(" ")
        );
        let ly = top + 10.0 + i as f64 * 22.0;
        let lx = left + pw + 16.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2"{dash}/>"#,
            lx + 28.0,
            se.color
        );
        let p50 = if se.p50_us >= 100.0 {
            format!(": p50 {:.0} µs", se.p50_us)
        } else {
            format!(": p50 {:.1} µs", se.p50_us)
        };
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="11">{}{}</text>"#,
            lx + 34.0,
            ly + 4.0,
            esc(&se.label),
            esc(&p50)
        );
    }
    s.push_str("</svg>\n");
    s
}
