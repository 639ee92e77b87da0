//! Two plots, written as SVG by hand (no plotting crate): loss curves of all methods on one chart,
//! and the task metric against trainable parameters (log scale) with the base model as a line.

use std::fmt::Write;

const W: f64 = 760.0;
const H: f64 = 440.0;
/// Plot area: left, top, right, bottom margins.
const L: f64 = 70.0;
const T: f64 = 40.0;
const R: f64 = 170.0;
const B: f64 = 50.0;
/// Colour-blind-safe palette (Okabe & Ito), then greys.
const COLOURS: [&str; 12] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000",
    "#882255", "#44AA99", "#999933", "#888888",
];

/// One named line.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A linear or log10 axis over `[lo, hi]`, mapped onto `[a, b]` pixels.
struct Axis {
    lo: f64,
    hi: f64,
    a: f64,
    b: f64,
    log: bool,
}

impl Axis {
    fn new(values: impl Iterator<Item = f64>, a: f64, b: f64, log: bool) -> Self {
        let f = |v: f64| if log { v.log10() } else { v };
        let (mut lo, mut hi) = values
            .filter(|v| v.is_finite() && (!log || *v > 0.0))
            .map(f)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        if log {
            (lo, hi) = (lo.floor(), hi.ceil().max(lo.floor() + 1.0));
        } else if hi - lo < 1e-12 {
            (lo, hi) = (lo - 0.5, hi + 0.5);
        } else {
            let pad = 0.05 * (hi - lo);
            (lo, hi) = (lo - pad, hi + pad);
        }
        Self { lo, hi, a, b, log }
    }

    fn px(&self, v: f64) -> f64 {
        let v = if self.log { v.log10() } else { v };
        self.a + (v - self.lo) / (self.hi - self.lo) * (self.b - self.a)
    }

    /// (value, label) of about five ticks: powers of ten on a log axis.
    fn ticks(&self) -> Vec<(f64, String)> {
        if self.log {
            return (self.lo as i32..=self.hi as i32)
                .map(|e| (10f64.powi(e), format!("1e{e}")))
                .collect();
        }
        let raw = (self.hi - self.lo) / 6.0;
        let mag = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| m * mag)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * mag);
        let first = (self.lo / step).ceil() as i64;
        let last = (self.hi / step).floor() as i64;
        (first..=last)
            .map(|i| {
                let v = i as f64 * step;
                (v, format!("{}", (v * 1e6).round() / 1e6))
            })
            .collect()
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Frame, title, axis labels, ticks and grid.
fn frame(svg: &mut String, title: &str, labels: (&str, &str), x: &Axis, y: &Axis) {
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{H}" fill="white"/>
<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text transform="translate(18 {}) rotate(-90)" text-anchor="middle">{}</text>
"#,
        (L + W - R) / 2.0,
        escape(title),
        (L + W - R) / 2.0,
        H - 12.0,
        escape(labels.0),
        (T + H - B) / 2.0,
        escape(labels.1)
    );
    for (v, label) in x.ticks() {
        let px = x.px(v);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{T}" x2="{px:.1}" y2="{}" stroke="#eee"/><text x="{px:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            H - B,
            H - B + 16.0
        );
    }
    for (v, label) in y.ticks() {
        let py = y.px(v);
        let _ = writeln!(
            svg,
            r##"<line x1="{L}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            W - R,
            L - 6.0,
            py + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<rect x="{L}" y="{T}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        W - R - L,
        H - B - T
    );
}

fn legend_entry(svg: &mut String, i: usize, name: &str, colour: &str, dashed: bool) {
    let y = T + 10.0 + 18.0 * i as f64;
    let dash = if dashed {
        r#" stroke-dasharray="6 4""#
    } else {
        ""
    };
    let _ = writeln!(
        svg,
        r#"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
        W - R + 10.0,
        W - R + 34.0,
        W - R + 40.0,
        y + 4.0,
        escape(name)
    );
}

/// Loss curves: one polyline per series.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let x = Axis::new(all().map(|p| p.0), L, W - R, false);
    let y = Axis::new(all().map(|p| p.1), H - B, T, false);
    let mut svg = String::new();
    frame(&mut svg, title, (x_label, y_label), &x, &y);
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|&(a, b)| format!("{:.1},{:.1}", x.px(a), y.px(b)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            points.join(" ")
        );
        legend_entry(&mut svg, i, &s.name, colour, false);
    }
    svg.push_str("</svg>\n");
    svg
}

/// The first of a few positions near `(x, y)` (above, below, further up, ...) where a label `w`
/// px wide stays clear of those already placed (`(x, y, w)`; labels are ~14 px high).
fn label_position(placed: &[(f64, f64, f64)], x: f64, y: f64, w: f64) -> (f64, f64) {
    let clear = |ly: f64| {
        placed
            .iter()
            .all(|&(px, py, pw)| px + pw < x || x + w < px || (py - ly).abs() > 14.0)
    };
    [0.0, 21.0, -14.0, 35.0, -28.0, 49.0]
        .iter()
        .map(|dy| y + dy)
        .find(|&ly| clear(ly))
        .map_or((x, y), |ly| (x, ly))
}

/// Labelled points `(name, x, y)` on a log-x axis; each of `baselines` is a dashed horizontal
/// line. With `unit_y` the y axis spans at least [0, 1] (scores).
pub fn scatter_log_x(
    title: &str,
    labels: (&str, &str),
    points: &[(String, f64, f64)],
    baselines: &[(&str, f64)],
    unit_y: bool,
) -> String {
    let x = Axis::new(points.iter().map(|p| p.1), L, W - R, true);
    let unit = if unit_y { vec![0.0, 1.0] } else { vec![] };
    let ys = points
        .iter()
        .map(|p| p.2)
        .chain(baselines.iter().map(|b| b.1))
        .chain(unit);
    let y = Axis::new(ys, H - B, T, false);
    let mut svg = String::new();
    frame(&mut svg, title, labels, &x, &y);
    for (i, &(name, v)) in baselines.iter().enumerate() {
        let (py, colour) = (y.px(v), ["#888", "#444"][i % 2]);
        let _ = writeln!(
            svg,
            r##"<line x1="{L}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="{colour}" stroke-width="2" stroke-dasharray="6 4"/>"##,
            W - R
        );
        legend_entry(&mut svg, i, name, colour, true);
    }
    let mut placed: Vec<(f64, f64, f64)> = Vec::new();
    for (i, (name, a, b)) in points.iter().enumerate() {
        if !(a.is_finite() && *a > 0.0 && b.is_finite()) {
            continue;
        }
        let colour = COLOURS[i % COLOURS.len()];
        let (px, py) = (x.px(*a), y.px(*b));
        // About 7 px per character at font-size 12.
        let w = 7.0 * name.chars().count() as f64;
        let (lx, ly) = label_position(&placed, px + 7.0, py - 7.0, w);
        placed.push((lx, ly, w));
        let _ = writeln!(
            svg,
            r#"<circle cx="{px:.1}" cy="{py:.1}" r="5" fill="{colour}"/><text x="{lx:.1}" y="{ly:.1}" fill="{colour}">{}</text>"#,
            escape(name)
        );
        legend_entry(&mut svg, baselines.len() + i, name, colour, false);
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_chart_draws_one_polyline_and_legend_entry_per_series() {
        let series = vec![
            Series {
                name: "lora".into(),
                points: vec![(1.0, 3.0), (2.0, 2.0), (3.0, 1.5)],
            },
            Series {
                name: "a<b".into(),
                points: vec![(1.0, 3.2), (2.0, 2.9)],
            },
        ];
        let svg = line_chart("loss", "step", "loss", &series);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a&lt;b") && !svg.contains("a<b"));
    }

    #[test]
    fn points_land_inside_the_plot_area() {
        let pts = vec![
            ("lora".to_string(), 2.4e6, 0.9),
            ("ia3".to_string(), 4.0e4, 0.7),
        ];
        let svg = scatter_log_x("acc", ("params", "acc"), &pts, &[("base", 0.1)], true);
        assert_eq!(svg.matches("<circle").count(), 2);
        for c in svg.split("<circle cx=\"").skip(1) {
            let cx: f64 = c.split('"').next().unwrap().parse().unwrap();
            assert!((L..=W - R).contains(&cx), "{cx}");
        }
        assert!(svg.contains(">1e4<") && svg.contains(">1e7<"));
        assert!(svg.contains(">0<") && svg.contains(">1<"));
        let labels = vec![(10.0, 10.0, 30.0)];
        assert_eq!(label_position(&labels, 12.0, 12.0, 30.0), (12.0, 33.0));
        assert_eq!(label_position(&labels, 100.0, 12.0, 30.0), (100.0, 12.0));
    }

    #[test]
    fn linear_ticks_are_round_numbers() {
        let axis = Axis::new([0.0, 1.0].into_iter(), 0.0, 100.0, false);
        let labels: Vec<String> = axis.ticks().into_iter().map(|t| t.1).collect();
        assert_eq!(labels, ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
    }
}
