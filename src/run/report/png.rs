//! The PNG report: the same two charts as the HTML report, rasterized here (lines, bars, and
//! text in the public-domain 8x8 bitmap font of the `font8x8` crate), so no font file or
//! plotting library is needed.

use font8x8::UnicodeFonts;

use super::ReportData;

type Rgb = [u8; 3];

const WHITE: Rgb = [255, 255, 255];
const INK: Rgb = [27, 31, 36];
const MUTED: Rgb = [87, 96, 106];
const GRID: Rgb = [227, 230, 234];
const BLUE: Rgb = [9, 105, 218];
const RED: Rgb = [207, 34, 46];
const PURPLE: Rgb = [130, 80, 223];

/// Image size.
pub const WIDTH: u32 = 1000;
/// Image size.
pub const HEIGHT: u32 = 440;

/// An RGB raster.
pub struct Canvas {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl Canvas {
    /// A white canvas.
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            pixels: WHITE
                .iter()
                .copied()
                .cycle()
                .take((width * height * 3) as usize)
                .collect(),
        }
    }

    /// The colour at (x, y).
    #[cfg(test)]
    pub fn get(&self, x: u32, y: u32) -> Option<Rgb> {
        (x < self.width && y < self.height).then(|| {
            let i = ((y * self.width + x) * 3) as usize;
            [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
        })
    }

    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as u32) < self.width && (y as u32) < self.height {
            let i = ((y as u32 * self.width + x as u32) * 3) as usize;
            self.pixels[i..i + 3].copy_from_slice(&c);
        }
    }

    fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        for y in y0.min(y1)..=y0.max(y1) {
            for x in x0.min(x1)..=x0.max(x1) {
                self.set(x, y, c);
            }
        }
    }

    /// A line `thickness` pixels wide; with `dash` = (on, off) it is dashed.
    fn line(
        &mut self,
        a: (f64, f64),
        b: (f64, f64),
        thickness: i64,
        c: Rgb,
        dash: Option<(f64, f64)>,
    ) {
        let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
        let steps = len.ceil().max(1.0) as usize;
        let r = thickness / 2;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            if let Some((on, off)) = dash
                && (t * len) % (on + off) > on
            {
                continue;
            }
            let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
            self.rect(
                x.round() as i64 - r,
                y.round() as i64 - r,
                x.round() as i64 + r,
                y.round() as i64 + r,
                c,
            );
        }
    }

    fn disc(&mut self, cx: f64, cy: f64, radius: f64, c: Rgb) {
        let r = radius.ceil() as i64;
        for dy in -r..=r {
            for dx in -r..=r {
                if ((dx * dx + dy * dy) as f64) <= radius * radius {
                    self.set(cx.round() as i64 + dx, cy.round() as i64 + dy, c);
                }
            }
        }
    }

    /// Text with its top-left corner at (x, y), each font pixel `scale` pixels wide.
    fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: Rgb) {
        for (i, ch) in s.chars().enumerate() {
            let glyph = font8x8::BASIC_FONTS
                .get(ch)
                .or_else(|| font8x8::BASIC_FONTS.get('?'))
                .unwrap_or([0; 8]);
            let gx = x + i as i64 * 8 * scale;
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        let px = gx + col * scale;
                        let py = y + row as i64 * scale;
                        self.rect(px, py, px + scale - 1, py + scale - 1, c);
                    }
                }
            }
        }
    }

    fn text_width(s: &str, scale: i64) -> i64 {
        s.chars().count() as i64 * 8 * scale
    }

    /// PNG bytes.
    pub fn encode(&self) -> Result<Vec<u8>, ::png::EncodingError> {
        let mut out = Vec::new();
        {
            let mut enc = ::png::Encoder::new(&mut out, self.width, self.height);
            enc.set_color(::png::ColorType::Rgb);
            enc.set_depth(::png::BitDepth::Eight);
            let mut w = enc.write_header()?;
            w.write_image_data(&self.pixels)?;
        }
        Ok(out)
    }
}

/// A chart panel's plot area.
#[derive(Clone, Copy)]
struct Panel {
    x0: f64,
    y0: f64,
    w: f64,
    h: f64,
}

impl Panel {
    fn x(&self, r: u32, n: u32) -> f64 {
        self.x0 + self.w * (f64::from(r) - 0.5) / f64::from(n)
    }
    fn y(&self, v: f64, max: f64) -> f64 {
        self.y0 + self.h * (1.0 - (v / max).clamp(0.0, 1.0))
    }
}

fn tick_label(v: f64) -> String {
    super::short_number(v)
}

fn axes(c: &mut Canvas, p: Panel, n: u32, max: f64, ticks: &[f64], title: &str) {
    c.text(p.x0 as i64 - 50, p.y0 as i64 - 34, title, 2, INK);
    for t in ticks {
        let y = p.y(*t, max);
        c.line((p.x0, y), (p.x0 + p.w, y), 1, GRID, None);
        let label = tick_label(*t);
        c.text(
            p.x0 as i64 - 8 - Canvas::text_width(&label, 1),
            y as i64 - 4,
            &label,
            1,
            MUTED,
        );
    }
    c.line((p.x0, p.y0), (p.x0, p.y0 + p.h), 2, MUTED, None);
    c.line((p.x0, p.y0 + p.h), (p.x0 + p.w, p.y0 + p.h), 2, MUTED, None);
    for r in 1..=n {
        let label = r.to_string();
        let x = p.x(r, n) as i64 - Canvas::text_width(&label, 1) / 2;
        c.text(x, (p.y0 + p.h) as i64 + 8, &label, 1, MUTED);
    }
    c.text(
        (p.x0 + p.w / 2.0) as i64 - 20,
        (p.y0 + p.h) as i64 + 24,
        "round",
        1,
        MUTED,
    );
}

/// The PNG report.
pub fn render_png(d: &ReportData) -> Result<Vec<u8>, ::png::EncodingError> {
    let mut c = Canvas::new(WIDTH, HEIGHT);
    c.text(
        20,
        12,
        &format!("llamaduo {}: {}", d.title, d.phase),
        2,
        INK,
    );
    let n = d.last_round();

    let score = Panel {
        x0: 70.0,
        y0: 90.0,
        w: 390.0,
        h: 260.0,
    };
    axes(
        &mut c,
        score,
        n,
        100.0,
        &[0.0, 25.0, 50.0, 75.0, 100.0],
        "mean score per round",
    );
    let ty = score.y(d.target, 100.0);
    c.line(
        (score.x0, ty),
        (score.x0 + score.w, ty),
        2,
        RED,
        Some((8.0, 5.0)),
    );
    let label = format!("target {:.0}", d.target);
    c.text(
        (score.x0 + score.w) as i64 - Canvas::text_width(&label, 1),
        ty as i64 - 12,
        &label,
        1,
        RED,
    );
    for pair in d.scores.windows(2) {
        let a = (score.x(pair[0].0, n), score.y(pair[0].1, 100.0));
        let b = (score.x(pair[1].0, n), score.y(pair[1].1, 100.0));
        c.line(a, b, 3, BLUE, None);
    }
    for (r, s) in &d.scores {
        let (x, y) = (score.x(*r, n), score.y(*s, 100.0));
        c.disc(x, y, 5.0, BLUE);
        let label = format!("{s:.1}");
        c.text(
            x as i64 - Canvas::text_width(&label, 1) / 2,
            y as i64 - 18,
            &label,
            1,
            INK,
        );
    }

    let tokens = Panel {
        x0: 580.0,
        y0: 90.0,
        w: 390.0,
        h: 260.0,
    };
    let max = d.tokens_axis_max() as f64;
    let ticks: Vec<f64> = (0..=4).map(|i| max * f64::from(i) / 4.0).collect();
    axes(&mut c, tokens, n, max, &ticks, "service tokens per round");
    let band = tokens.w / f64::from(n);
    for (r, t) in &d.tokens {
        let x = tokens.x(*r, n);
        let y = tokens.y(*t as f64, max);
        c.rect(
            (x - band * 0.3) as i64,
            y as i64,
            (x + band * 0.3) as i64,
            (tokens.y0 + tokens.h) as i64 - 1,
            PURPLE,
        );
        let label = tick_label(*t as f64);
        c.text(
            x as i64 - Canvas::text_width(&label, 1) / 2,
            y as i64 - 12,
            &label,
            1,
            INK,
        );
    }

    let best = match &d.best {
        Some(b) => format!("best model: {b}"),
        None => "no round scored yet".to_string(),
    };
    // Long paths are cut from the left so the end of the path stays readable.
    let max_chars = ((WIDTH - 40) / 8) as usize;
    let chars: Vec<char> = best.chars().collect();
    let best: String = if chars.len() > max_chars {
        std::iter::once('~')
            .chain(chars[chars.len() - max_chars + 1..].iter().copied())
            .collect()
    } else {
        best
    };
    c.text(20, HEIGHT as i64 - 24, &best, 1, INK);
    c.encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> (png::OutputInfo, Vec<u8>) {
        let dec = ::png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = dec.read_info().expect("png header");
        let mut buf = vec![0; reader.output_buffer_size().expect("size")];
        let info = reader.next_frame(&mut buf).expect("frame");
        (info, buf)
    }

    #[test]
    fn the_png_decodes_and_draws_score_target_and_bars() {
        let d = ReportData {
            title: "local/q".into(),
            target: 80.0,
            scores: vec![(1, 40.0), (2, 90.0)],
            tokens: vec![(1, 5_000), (2, 2_000)],
            phase: "Succeeded".into(),
            message: String::new(),
            best: Some("round 2".into()),
        };
        let bytes = render_png(&d).expect("encodes");
        let (info, pixels) = decode(&bytes);
        assert_eq!((info.width, info.height), (WIDTH, HEIGHT));
        let at = |x: f64, y: f64| {
            let i = ((y.round() as usize) * WIDTH as usize + x.round() as usize) * 3;
            [pixels[i], pixels[i + 1], pixels[i + 2]]
        };
        let score = Panel {
            x0: 70.0,
            y0: 90.0,
            w: 390.0,
            h: 260.0,
        };
        assert_eq!(
            at(score.x(2, 2), score.y(90.0, 100.0)),
            BLUE,
            "round 2's point"
        );
        assert_eq!(
            at(score.x0 + 2.0, score.y(80.0, 100.0)),
            RED,
            "the target line starts dashed"
        );
        let tokens = Panel {
            x0: 580.0,
            y0: 90.0,
            w: 390.0,
            h: 260.0,
        };
        let max = d.tokens_axis_max() as f64;
        assert_eq!(
            at(tokens.x(1, 2), tokens.y(4_000.0, max)),
            PURPLE,
            "round 1's bar"
        );
        assert_eq!(
            at(tokens.x(2, 2), tokens.y(4_000.0, max)),
            WHITE,
            "round 2's bar is lower"
        );
    }

    #[test]
    fn text_is_drawn() {
        let mut c = Canvas::new(20, 10);
        c.text(0, 0, "A", 1, INK);
        let inked = (0..8)
            .flat_map(|y| (0..8).map(move |x| (x, y)))
            .filter(|(x, y)| c.get(*x, *y) == Some(INK))
            .count();
        assert!(inked > 10, "{inked}");
    }
}
