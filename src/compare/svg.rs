//! The plots, written as SVG by hand (no plotting crate): loss curves of all methods on one chart
//! (smoothed, log-y when their ranges differ by more than 10x, diverged or failed methods named
//! in a note rather than stretching the axes), and the task metric against a cost (trainable
//! parameters, memory) with error bars and the Pareto front. Labels are placed where they touch
//! no point, no other label and stay inside the frame (`place_labels`).

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

/// Loss curves: one polyline per series; `log_y` for a log10 y axis; `note` (e.g. the methods
/// left out) under the title.
pub fn line_chart(
    title: &str,
    labels: (&str, &str),
    series: &[Series],
    log_y: bool,
    note: Option<&str>,
) -> String {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let x = Axis::new(all().map(|p| p.0), L, W - R, false);
    let y = Axis::new(all().map(|p| p.1), H - B, T, log_y);
    let mut svg = String::new();
    frame(&mut svg, title, labels, &x, &y);
    if let Some(note) = note {
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="36" text-anchor="middle" fill="#666">{}</text>"##,
            (L + W - R) / 2.0,
            escape(note)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite() && (!log_y || p.1 > 0.0))
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

/// A label's box: left, top, width, height (px).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LabelBox {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

impl LabelBox {
    fn overlaps(&self, o: &LabelBox) -> bool {
        self.x < o.x + o.w && o.x < self.x + self.w && self.y < o.y + o.h && o.y < self.y + self.h
    }

    /// The box comes closer than `r` to the point.
    fn near(&self, (px, py): (f64, f64), r: f64) -> bool {
        let dx = (self.x - px).max(0.0).max(px - (self.x + self.w));
        let dy = (self.y - py).max(0.0).max(py - (self.y + self.h));
        dx * dx + dy * dy < r * r
    }

    fn inside(&self, area: &LabelBox) -> bool {
        self.x >= area.x
            && self.y >= area.y
            && self.x + self.w <= area.x + area.w
            && self.y + self.h <= area.y + area.h
    }
}

/// Label height at font-size 12, and the clearance kept around every marker.
pub const LABEL_H: f64 = 14.0;
const MARKER_CLEARANCE: f64 = 8.0;

/// Places one label per point (`(px, py)` and the label's width): the first of rings of 16
/// positions around its point (right, left, above, below, the diagonals and between, then
/// further out) whose box lies inside `area`, clear of every marker (and the error-bar ends in
/// `keep_out`) and of the labels placed before. `None` when nothing fits: the legend still names
/// the point.
pub fn place_labels(
    points: &[((f64, f64), f64)],
    keep_out: &[(f64, f64)],
    area: LabelBox,
) -> Vec<Option<LabelBox>> {
    let markers: Vec<(f64, f64)> = points
        .iter()
        .map(|p| p.0)
        .chain(keep_out.iter().copied())
        .collect();
    // Right first, then left, above, below, then the directions between.
    const ORDER: [usize; 16] = [0, 8, 12, 4, 14, 10, 2, 6, 15, 9, 13, 11, 3, 5, 1, 7];
    let mut placed: Vec<LabelBox> = Vec::new();
    let mut out = Vec::new();
    for &((px, py), w) in points {
        let h = LABEL_H;
        let mut found = None;
        'rings: for ring in 0..12 {
            let d = MARKER_CLEARANCE + 2.0 + 10.0 * ring as f64;
            for k in ORDER {
                let angle = k as f64 * std::f64::consts::PI / 8.0;
                let (cx, cy) = (
                    px + angle.cos() * (d + w / 2.0),
                    py - angle.sin() * (d + h / 2.0),
                );
                let b = LabelBox {
                    x: cx - w / 2.0,
                    y: cy - h / 2.0,
                    w,
                    h,
                };
                if b.inside(&area)
                    && markers.iter().all(|&m| !b.near(m, MARKER_CLEARANCE))
                    && placed.iter().all(|o| !b.overlaps(o))
                {
                    found = Some(b);
                    break 'rings;
                }
            }
        }
        if let Some(b) = found {
            placed.push(b);
        }
        out.push(found);
    }
    out
}

/// The point of `b` nearest to `(px, py)`, and how far it is.
fn nearest_on(b: &LabelBox, (px, py): (f64, f64)) -> ((f64, f64), f64) {
    let q = (px.clamp(b.x, b.x + b.w), py.clamp(b.y, b.y + b.h));
    (q, ((q.0 - px).powi(2) + (q.1 - py).powi(2)).sqrt())
}

/// One point of a cost–metric chart: `y` with its error bar `[lo, hi]`.
pub struct Point {
    pub name: String,
    pub x: f64,
    pub y: f64,
    pub lo: f64,
    pub hi: f64,
}

/// Indices of the Pareto front: no other point has a cost as low and a metric at least as high
/// (one of them strictly), in order of cost.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..points.len())
        .filter(|&i| points[i].0.is_finite() && points[i].1.is_finite())
        .collect();
    order.sort_by(|&a, &b| {
        points[a]
            .0
            .total_cmp(&points[b].0)
            .then(points[b].1.total_cmp(&points[a].1))
    });
    let mut best = f64::NEG_INFINITY;
    order
        .into_iter()
        .filter(|&i| {
            let keep = points[i].1 > best;
            best = best.max(points[i].1);
            keep
        })
        .collect()
}

/// What a cost–metric chart shows.
pub struct ParetoChart<'a> {
    pub title: &'a str,
    pub labels: (&'a str, &'a str),
    pub points: &'a [Point],
    /// Dashed horizontal lines (base model, majority label).
    pub baselines: &'a [(&'a str, f64)],
    pub log_x: bool,
    /// The y axis spans at least [0, 1] (scores).
    pub unit_y: bool,
    /// The front maximises y (scores) or minimises it (losses).
    pub higher_is_better: bool,
}

/// Points with error bars, the Pareto front as a dotted staircase, labels clear of everything.
pub fn pareto_chart(c: &ParetoChart) -> String {
    let ok: Vec<&Point> = c
        .points
        .iter()
        .filter(|p| p.x.is_finite() && (!c.log_x || p.x > 0.0) && p.y.is_finite())
        .collect();
    let x = Axis::new(ok.iter().map(|p| p.x), L, W - R, c.log_x);
    let unit = if c.unit_y { vec![0.0, 1.0] } else { vec![] };
    let ys = ok
        .iter()
        .flat_map(|p| [p.lo, p.hi, p.y])
        .chain(c.baselines.iter().map(|b| b.1))
        .chain(unit);
    let y = Axis::new(ys, H - B, T, false);
    let mut svg = String::new();
    frame(&mut svg, c.title, c.labels, &x, &y);
    for (i, &(name, v)) in c.baselines.iter().enumerate() {
        let (py, colour) = (y.px(v), ["#888", "#444"][i % 2]);
        let _ = writeln!(
            svg,
            r##"<line x1="{L}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="{colour}" stroke-width="2" stroke-dasharray="6 4"/>"##,
            W - R
        );
        legend_entry(&mut svg, i, name, colour, true);
    }
    let sign = if c.higher_is_better { 1.0 } else { -1.0 };
    let front = pareto_front(&ok.iter().map(|p| (p.x, sign * p.y)).collect::<Vec<_>>());
    if front.len() > 1 {
        let mut steps = Vec::new();
        for (k, &i) in front.iter().enumerate() {
            let (px, py) = (x.px(ok[i].x), y.px(ok[i].y));
            if k > 0 {
                steps.push(format!("{px:.1},{:.1}", y.px(ok[front[k - 1]].y)));
            }
            steps.push(format!("{px:.1},{py:.1}"));
        }
        let _ = writeln!(
            svg,
            r##"<polyline fill="none" stroke="#999" stroke-width="1" stroke-dasharray="2 3" points="{}"/>"##,
            steps.join(" ")
        );
    }
    let centres: Vec<(f64, f64)> = ok.iter().map(|p| (x.px(p.x), y.px(p.y))).collect();
    let ends: Vec<(f64, f64)> = ok
        .iter()
        .flat_map(|p| [(x.px(p.x), y.px(p.lo)), (x.px(p.x), y.px(p.hi))])
        .collect();
    // About 7 px per character at font-size 12.
    let widths = ok.iter().map(|p| 7.0 * p.name.chars().count() as f64);
    let area = LabelBox {
        x: L + 1.0,
        y: T + 1.0,
        w: W - R - L - 2.0,
        h: H - B - T - 2.0,
    };
    let boxes = place_labels(
        &centres.iter().copied().zip(widths).collect::<Vec<_>>(),
        &ends,
        area,
    );
    for (i, (p, b)) in ok.iter().zip(&boxes).enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let (px, py) = centres[i];
        let _ = writeln!(
            svg,
            r#"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="{colour}" stroke-width="1.5"/><circle cx="{px:.1}" cy="{py:.1}" r="5" fill="{colour}"/>"#,
            y.px(p.lo),
            y.px(p.hi)
        );
        if let Some(b) = b {
            // A label pushed away from its point gets a thin leader line.
            let ((qx, qy), d) = nearest_on(b, (px, py));
            if d > MARKER_CLEARANCE + 6.0 {
                let _ = writeln!(
                    svg,
                    r#"<line x1="{px:.1}" y1="{py:.1}" x2="{qx:.1}" y2="{qy:.1}" stroke="{colour}" stroke-width="0.7"/>"#
                );
            }
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" fill="{colour}">{}</text>"#,
                b.x,
                b.y + 11.0,
                escape(&p.name)
            );
        }
        legend_entry(&mut svg, c.baselines.len() + i, &p.name, colour, false);
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
        let svg = line_chart(
            "loss",
            ("step", "loss"),
            &series,
            false,
            Some("left out: x"),
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a&lt;b") && !svg.contains("a<b"));
        assert!(svg.contains("left out: x"));
        let log = line_chart("loss", ("step", "loss"), &series, true, None);
        assert!(log.contains(">1e0<") && log.contains(">1e1<"));
    }

    fn point(name: &str, x: f64, y: f64) -> Point {
        Point {
            name: name.into(),
            x,
            y,
            lo: y - 0.1,
            hi: y + 0.1,
        }
    }

    #[test]
    fn points_and_error_bars_land_inside_the_plot_area() {
        let pts = vec![point("lora", 2.4e6, 0.8), point("ia3", 4.0e4, 0.6)];
        let chart = ParetoChart {
            title: "acc",
            labels: ("params", "acc"),
            points: &pts,
            baselines: &[("base", 0.1)],
            log_x: true,
            unit_y: true,
            higher_is_better: true,
        };
        let svg = pareto_chart(&chart);
        assert_eq!(svg.matches("<circle").count(), 2);
        for c in svg.split("<circle cx=\"").skip(1) {
            let cx: f64 = c.split('"').next().unwrap().parse().unwrap();
            assert!((L..=W - R).contains(&cx), "{cx}");
        }
        assert!(svg.contains(">1e4<") && svg.contains(">1e7<"));
        assert!(svg.contains(">0<") && svg.contains(">1<"));
        // Both on the front: ia3 is cheaper, lora better.
        assert!(svg.contains("stroke-dasharray=\"2 3\""));
    }

    #[test]
    fn the_pareto_front_keeps_only_undominated_points_in_cost_order() {
        let pts = [(1.0, 0.5), (2.0, 0.4), (3.0, 0.9), (0.5, 0.2), (3.0, 0.7)];
        assert_eq!(pareto_front(&pts), vec![3, 0, 2]);
    }

    /// Ten labels in a tight cluster near a corner: every placed label is inside the frame and
    /// clear of every marker and of every other label, and most find a place.
    #[test]
    fn labels_never_collide_with_points_frames_or_each_other() {
        let area = LabelBox {
            x: 70.0,
            y: 40.0,
            w: 520.0,
            h: 350.0,
        };
        let mut points = Vec::new();
        for i in 0..10 {
            let (px, py) = (75.0 + 9.0 * (i % 4) as f64, 45.0 + 11.0 * (i / 4) as f64);
            points.push(((px, py), 7.0 * (4 + i % 5) as f64));
        }
        points.push(((300.0, 200.0), 70.0));
        points.push(((310.0, 204.0), 70.0));
        let ends = vec![(300.0, 180.0), (300.0, 220.0)];
        let boxes = place_labels(&points, &ends, area);
        let placed: Vec<LabelBox> = boxes.iter().flatten().copied().collect();
        assert!(
            placed.len() >= 10,
            "{} of {} placed",
            placed.len(),
            points.len()
        );
        for (i, b) in placed.iter().enumerate() {
            assert!(b.inside(&area), "{b:?}");
            for ((p, _), _) in points.iter().zip(0..) {
                assert!(!b.near(*p, MARKER_CLEARANCE), "{b:?} touches {p:?}");
            }
            for e in &ends {
                assert!(!b.near(*e, MARKER_CLEARANCE), "{b:?} touches {e:?}");
            }
            for o in &placed[i + 1..] {
                assert!(!b.overlaps(o), "{b:?} overlaps {o:?}");
            }
        }
    }

    #[test]
    fn linear_ticks_are_round_numbers() {
        let axis = Axis::new([0.0, 1.0].into_iter(), 0.0, 100.0, false);
        let labels: Vec<String> = axis.ticks().into_iter().map(|t| t.1).collect();
        assert_eq!(labels, ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
    }
}
