//! The sustained run's chart, hand-written SVG as `load/report.rs` draws latency.svg: the
//! outbox over time (with `outbox_max` when it is in view), and under it the usage records
//! produced and applied by the embedded ledger per second.

use std::fmt::Write as _;

use crate::out::{esc, svg_open};

/// One sample of the run, taken every second.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub t_s: f64,
    /// Usage records journaled and not yet applied by the ledger.
    pub outbox: usize,
    /// Usage records the ledger has applied since the start.
    pub applied: u64,
    /// Usage records the sidecar has produced since the start (applied + outbox).
    pub produced: u64,
    /// Reserves refused for backlog so far.
    pub refused: u64,
}

/// A round number at or above `v` (1, 2 or 5 times a power of ten).
fn nice_ceil(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * p)
}

/// Per-second rates between consecutive samples: (t, produced/s, applied/s).
pub fn rates(samples: &[Sample]) -> Vec<(f64, f64, f64)> {
    samples
        .windows(2)
        .filter_map(|w| {
            let dt = w[1].t_s - w[0].t_s;
            (dt > 0.0).then(|| {
                (
                    w[1].t_s,
                    w[1].produced.saturating_sub(w[0].produced) as f64 / dt,
                    w[1].applied.saturating_sub(w[0].applied) as f64 / dt,
                )
            })
        })
        .collect()
}

/// One panel: a frame at `top` of height `ph`, x from 0 to `x_max` seconds, y from 0 to
/// `y_max`, with grid lines and labels; returns the mapping of a point into it.
struct Panel {
    left: f64,
    top: f64,
    pw: f64,
    ph: f64,
    x_max: f64,
    y_max: f64,
}

impl Panel {
    fn at(&self, x: f64, y: f64) -> (f64, f64) {
        (
            self.left + x.min(self.x_max) / self.x_max * self.pw,
            self.top + self.ph - y.min(self.y_max) / self.y_max * self.ph,
        )
    }

    fn frame(&self, s: &mut String, y_label: &str) {
        for i in 0..=5 {
            let y = self.y_max * f64::from(i) / 5.0;
            let (_, gy) = self.at(0.0, y);
            let _ = writeln!(
                s,
                r##"<line x1="{}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#ddd"/>"##,
                self.left,
                self.left + self.pw
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                self.left - 8.0,
                gy + 4.0,
                human(y)
            );
        }
        for i in 0..=10 {
            let x = self.x_max * f64::from(i) / 10.0;
            let (gx, _) = self.at(x, 0.0);
            let _ = writeln!(
                s,
                r##"<line x1="{gx:.1}" y1="{}" x2="{gx:.1}" y2="{:.1}" stroke="#eee"/>"##,
                self.top,
                self.top + self.ph
            );
            let _ = writeln!(
                s,
                r#"<text x="{gx:.1}" y="{:.1}" text-anchor="middle">{:.0} s</text>"#,
                self.top + self.ph + 16.0,
                x
            );
        }
        let _ = writeln!(
            s,
            r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
            self.left, self.top, self.pw, self.ph
        );
        let cy = self.top + self.ph / 2.0;
        let _ = writeln!(
            s,
            r#"<text x="18" y="{cy:.1}" text-anchor="middle" transform="rotate(-90 18 {cy:.1})">{}</text>"#,
            esc(y_label)
        );
    }

    fn line(&self, s: &mut String, pts: &[(f64, f64)], color: &str, dashed: bool) {
        let pts: Vec<String> = pts
            .iter()
            .map(|(x, y)| {
                let (px, py) = self.at(*x, *y);
                format!("{px:.1},{py:.1}")
            })
            .collect();
        let dash = if dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
            pts.join(" ")
        );
    }

    fn legend(&self, s: &mut String, i: usize, label: &str, color: &str, dashed: bool) {
        let ly = self.top + 12.0 + i as f64 * 20.0;
        let lx = self.left + self.pw + 16.0;
        let dash = if dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"{dash}/>"#,
            lx + 28.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
            lx + 34.0,
            ly + 4.0,
            esc(label)
        );
    }
}

fn human(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{:.1}M", v / 1_000_000.0)
    } else if v >= 1_000.0 {
        format!("{:.0}k", v / 1_000.0)
    } else {
        format!("{v:.0}")
    }
}

/// The chart: outbox over time, then produced and applied records per second.
pub fn svg(samples: &[Sample], outbox_max: usize, title: &str, subtitle: &str) -> String {
    let (w, h) = (1040.0, 720.0);
    let (left, right) = (90.0, 300.0);
    let pw = w - left - right;
    let x_max = nice_ceil(samples.last().map_or(1.0, |s| s.t_s).max(1.0));
    let outbox_peak = samples.iter().map(|s| s.outbox).max().unwrap_or(0) as f64;
    // outbox_max is drawn when the outbox came within a tenth of it.
    let show_max = outbox_peak * 10.0 >= outbox_max as f64;
    let top_panel = Panel {
        left,
        top: 70.0,
        pw,
        ph: 260.0,
        x_max,
        y_max: nice_ceil(if show_max {
            outbox_max as f64 * 1.05
        } else {
            outbox_peak.max(1.0) * 1.1
        }),
    };
    let rates = rates(samples);
    let rate_peak = rates
        .iter()
        .map(|r| r.1.max(r.2))
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let low_panel = Panel {
        left,
        top: 400.0,
        pw,
        ph: 260.0,
        x_max,
        y_max: nice_ceil(rate_peak * 1.1),
    };
    let mut s = String::new();
    svg_open(&mut s, w, h, left, title, subtitle);
    top_panel.frame(&mut s, "outbox (usage records)");
    let outbox: Vec<(f64, f64)> = samples.iter().map(|x| (x.t_s, x.outbox as f64)).collect();
    top_panel.line(&mut s, &outbox, "#d62728", false);
    top_panel.legend(&mut s, 0, "outbox length", "#d62728", false);
    if show_max {
        let cap = [(0.0, outbox_max as f64), (x_max, outbox_max as f64)];
        top_panel.line(&mut s, &cap, "#333", true);
        top_panel.legend(
            &mut s,
            1,
            &format!("outbox_max ({outbox_max}): Reserves refused"),
            "#333",
            true,
        );
    }
    low_panel.frame(&mut s, "usage records per second");
    let produced: Vec<(f64, f64)> = rates.iter().map(|r| (r.0, r.1)).collect();
    let applied: Vec<(f64, f64)> = rates.iter().map(|r| (r.0, r.2)).collect();
    low_panel.line(&mut s, &produced, "#1f77b4", false);
    low_panel.line(&mut s, &applied, "#2ca02c", true);
    low_panel.legend(&mut s, 0, "produced by the sidecar", "#1f77b4", false);
    low_panel.legend(&mut s, 1, "applied by the ledger", "#2ca02c", true);
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds since the load started</text>"#,
        left + pw / 2.0,
        h - 12.0
    );
    s.push_str("</svg>\n");
    s
}
