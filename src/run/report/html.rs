//! The HTML report: one file with inline CSS and SVG charts, no scripts and no network assets,
//! so it opens the same offline, from a CI artifact or an email.

use std::fmt::Write;

use super::ReportData;

const W: f64 = 560.0;
const H: f64 = 300.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 40.0;

/// Escapes text for HTML content and attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The x of the centre of round `r`'s band among `n` rounds.
fn band_x(r: u32, n: u32) -> f64 {
    LEFT + (W - LEFT - RIGHT) * (f64::from(r) - 0.5) / f64::from(n)
}

/// The y of `v` on an axis from 0 to `max`.
fn value_y(v: f64, max: f64) -> f64 {
    TOP + (H - TOP - BOTTOM) * (1.0 - (v / max).clamp(0.0, 1.0))
}

fn axes(svg: &mut String, n: u32, max: f64, ticks: &[f64], label: &str) {
    for t in ticks {
        let y = value_y(*t, max);
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            format_tick(*t)
        );
    }
    for r in 1..=n {
        let _ = write!(
            svg,
            r#"<text class="tick" x="{:.1}" y="{:.1}" text-anchor="middle">{r}</text>"#,
            band_x(r, n),
            H - BOTTOM + 16.0
        );
    }
    let _ = write!(
        svg,
        r#"<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{b:.1}"/><line class="axis" x1="{LEFT}" y1="{b:.1}" x2="{:.1}" y2="{b:.1}"/><text class="label" x="{:.1}" y="{:.1}" text-anchor="middle">round</text><text class="label" x="14" y="{:.1}" text-anchor="middle" transform="rotate(-90 14 {:.1})">{}</text>"#,
        W - RIGHT,
        (LEFT + W - RIGHT) / 2.0,
        H - 6.0,
        H / 2.0,
        H / 2.0,
        escape(label),
        b = H - BOTTOM
    );
}

fn format_tick(v: f64) -> String {
    super::short_number(v)
}

/// The score chart: mean score per round (line and points) against the target (dashed).
pub fn score_svg(d: &ReportData) -> String {
    let n = d.last_round();
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="mean score per round against the target">"#
    );
    axes(
        &mut svg,
        n,
        100.0,
        &[0.0, 25.0, 50.0, 75.0, 100.0],
        "mean score",
    );
    let ty = value_y(d.target, 100.0);
    let _ = write!(
        svg,
        r#"<line class="target" x1="{LEFT}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}"/><text class="target-label" x="{:.1}" y="{:.1}" text-anchor="end">target {:.0}</text>"#,
        W - RIGHT,
        W - RIGHT - 4.0,
        ty - 6.0,
        d.target
    );
    let points: Vec<String> = d
        .scores
        .iter()
        .map(|(r, s)| format!("{:.1},{:.1}", band_x(*r, n), value_y(*s, 100.0)))
        .collect();
    if points.len() > 1 {
        let _ = write!(
            svg,
            r#"<polyline class="score" points="{}"/>"#,
            points.join(" ")
        );
    }
    for (r, s) in &d.scores {
        let (x, y) = (band_x(*r, n), value_y(*s, 100.0));
        let _ = write!(
            svg,
            r#"<circle class="point" cx="{x:.1}" cy="{y:.1}" r="4"><title>round {r}: {s:.1}</title></circle><text class="value" x="{x:.1}" y="{:.1}" text-anchor="middle">{s:.1}</text>"#,
            y - 9.0
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The tokens chart: service tokens per round as bars.
pub fn tokens_svg(d: &ReportData) -> String {
    let n = d.last_round();
    let max = d.tokens_axis_max() as f64;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="service tokens per round">"#
    );
    let ticks: Vec<f64> = (0..=4).map(|i| max * f64::from(i) / 4.0).collect();
    axes(&mut svg, n, max, &ticks, "service tokens");
    let band = (W - LEFT - RIGHT) / f64::from(n);
    for (r, t) in &d.tokens {
        let y = value_y(*t as f64, max);
        let _ = write!(
            svg,
            r#"<rect class="bar" x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}"><title>round {r}: {t} tokens</title></rect><text class="value" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            band_x(*r, n) - band * 0.3,
            band * 0.6,
            (H - BOTTOM) - y,
            band_x(*r, n),
            y - 5.0,
            format_tick(*t as f64)
        );
    }
    svg.push_str("</svg>");
    svg
}

const CSS: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem;color:#1b1f24;background:#fff}\
h1{font-size:1.4rem}.charts{display:flex;flex-wrap:wrap;gap:1.5rem}figure{margin:0}\
figcaption{font-weight:600;margin-bottom:.3rem}.grid{stroke:#e3e6ea}.axis{stroke:#57606a}\
.tick,.value{font-size:11px;fill:#57606a}.label{font-size:12px;fill:#1b1f24}\
.score{fill:none;stroke:#0969da;stroke-width:2.5}.point{fill:#0969da}\
.target{stroke:#cf222e;stroke-width:1.5;stroke-dasharray:6 4}.target-label{font-size:11px;fill:#cf222e}\
.bar{fill:#8250df}pre{background:#f6f8fa;padding:1rem;overflow:auto}code{font-size:.95em}";

/// The whole report page; `table` is the text table of rounds.
pub fn render_html(d: &ReportData, table: &str) -> String {
    let best = match &d.best {
        Some(b) => format!("<p>Best model: <code>{}</code></p>", escape(b)),
        None => "<p>No round has been scored yet.</p>".to_string(),
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>llamaduo: {title}</title><style>{CSS}</style></head><body>\
<h1>llamaduo migration {title}</h1><p><strong>{phase}</strong>: {message}</p>{best}\
<div class=\"charts\"><figure><figcaption>Mean score per round (target {target:.0})</figcaption>{score}</figure>\
<figure><figcaption>Service tokens per round</figcaption>{tokens}</figure></div>\
<h2>Rounds</h2><pre>{table}</pre></body></html>\n",
        title = escape(&d.title),
        phase = escape(&d.phase),
        message = escape(&d.message),
        target = d.target,
        score = score_svg(d),
        tokens = tokens_svg(d),
        table = escape(table),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> ReportData {
        ReportData {
            title: "local/q<x>".into(),
            target: 80.0,
            scores: vec![(1, 42.0), (2, 86.5)],
            tokens: vec![(1, 12_000), (2, 9_000)],
            phase: "Succeeded".into(),
            message: "round 2 reached the target".into(),
            best: Some("round 2, mean score 86.5, /w/round-2/model".into()),
        }
    }

    #[test]
    fn the_page_is_self_contained_and_shows_the_numbers() {
        let page = render_html(&data(), "round  mean\n1  42.0\n");
        assert!(page.starts_with("<!DOCTYPE html>"));
        for forbidden in ["<script", "<link", "src=", "@import", "url("] {
            assert!(
                !page.contains(forbidden),
                "network or script asset: {forbidden}"
            );
        }
        assert!(page.contains("local/q&lt;x&gt;"), "escaped title");
        assert!(page.contains("/w/round-2/model"));
        assert!(page.contains("target 80"));
        assert!(page.contains("round 2: 86.5"));
        assert!(page.contains("round 1: 12000 tokens"));
        assert_eq!(page.matches("<svg").count(), 2);
    }

    #[test]
    fn points_rise_with_the_score_and_sit_in_their_bands() {
        let svg = score_svg(&data());
        let (y1, y2) = (value_y(42.0, 100.0), value_y(86.5, 100.0));
        assert!(y2 < y1, "a higher score is drawn higher");
        assert!(
            svg.contains(&format!("cy=\"{y1:.1}\"")) && svg.contains(&format!("cy=\"{y2:.1}\""))
        );
        assert!(band_x(1, 2) < band_x(2, 2));
    }
}
