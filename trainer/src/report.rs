//! What a run leaves besides its checkpoint: the validation confusion matrix of the best epoch
//! as CSV and as a PNG heat map (drawn here with a 3x5 pixel font, no plotting stack), and
//! per-class accuracy.

use crate::error::{Result, TrainerError};

/// `counts[true][predicted]` over the validation split.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Confusion {
    pub counts: Vec<Vec<u64>>,
}

impl Confusion {
    pub fn new(classes: usize) -> Self {
        Confusion { counts: vec![vec![0; classes]; classes] }
    }

    pub fn add(&mut self, truth: usize, predicted: usize) {
        self.counts[truth][predicted] += 1;
    }

    /// Share of each true class predicted correctly (NaN for a class absent from the split).
    pub fn per_class_accuracy(&self) -> Vec<f64> {
        self.counts.iter().enumerate().map(|(i, row)| row[i] as f64 / row.iter().sum::<u64>() as f64).collect()
    }

    /// Header `true\predicted,0,..,9`, one row per true class.
    pub fn to_csv(&self) -> String {
        let n = self.counts.len();
        let mut s = String::from("true\\predicted");
        for j in 0..n {
            s.push_str(&format!(",{j}"));
        }
        s.push('\n');
        for (i, row) in self.counts.iter().enumerate() {
            s.push_str(&i.to_string());
            for c in row {
                s.push_str(&format!(",{c}"));
            }
            s.push('\n');
        }
        s
    }

    /// `class,correct,total,accuracy`.
    pub fn per_class_csv(&self) -> String {
        let mut s = String::from("class,correct,total,accuracy\n");
        for (i, (row, acc)) in self.counts.iter().zip(self.per_class_accuracy()).enumerate() {
            s.push_str(&format!("{i},{},{},{acc}\n", row[i], row.iter().sum::<u64>()));
        }
        s
    }

    /// A heat map (rows: true class, columns: predicted; shade = share of the row), with the
    /// class labels on the left and top and the count in each cell.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        const CELL: usize = 44;
        const MARGIN: usize = 28;
        let n = self.counts.len();
        let side = MARGIN + n * CELL + 1;
        let mut img = vec![255u8; side * side * 3];
        let mut put = |x: usize, y: usize, rgb: [u8; 3]| {
            let o = (y * side + x) * 3;
            img[o..o + 3].copy_from_slice(&rgb);
        };
        for (i, row) in self.counts.iter().enumerate() {
            let total = row.iter().sum::<u64>().max(1) as f64;
            for (j, &c) in row.iter().enumerate() {
                let v = c as f64 / total;
                let shade = |full: f64| (255.0 - v * (255.0 - full)).round() as u8;
                let fill = [shade(8.0), shade(48.0), shade(107.0)];
                let (x0, y0) = (MARGIN + j * CELL, MARGIN + i * CELL);
                for y in y0..y0 + CELL {
                    for x in x0..x0 + CELL {
                        let edge = x == x0 || y == y0;
                        put(x, y, if edge { [200, 200, 200] } else { fill });
                    }
                }
                let ink = if v > 0.5 { [255, 255, 255] } else { [0, 0, 0] };
                let text = c.to_string();
                let w = text.len() * 8 - 2;
                draw_text(&mut put, &text, x0 + (CELL - w) / 2, y0 + (CELL - 10) / 2, 2, ink);
            }
            let label = i.to_string();
            draw_text(&mut put, &label, (MARGIN - 6) / 2 - 1, MARGIN + i * CELL + (CELL - 10) / 2, 2, [0, 0, 0]);
            draw_text(&mut put, &label, MARGIN + i * CELL + (CELL - 6) / 2, (MARGIN - 10) / 2, 2, [0, 0, 0]);
        }
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, side as u32, side as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let png_err = |e: png::EncodingError| TrainerError::Config(format!("encoding the confusion matrix PNG: {e}"));
        let mut writer = enc.write_header().map_err(png_err)?;
        writer.write_image_data(&img).map_err(png_err)?;
        writer.finish().map_err(png_err)?;
        Ok(out)
    }
}

/// Rows of a 3x5 font for the digits, 3 bits each (most significant = left).
const DIGITS: [[u8; 5]; 10] = [
    [7, 5, 5, 5, 7],
    [2, 6, 2, 2, 7],
    [7, 1, 7, 4, 7],
    [7, 1, 7, 1, 7],
    [5, 5, 7, 1, 1],
    [7, 4, 7, 1, 7],
    [7, 4, 7, 5, 7],
    [7, 1, 1, 1, 1],
    [7, 5, 7, 5, 7],
    [7, 5, 7, 1, 7],
];

fn draw_text(put: &mut impl FnMut(usize, usize, [u8; 3]), text: &str, x: usize, y: usize, scale: usize, rgb: [u8; 3]) {
    for (k, ch) in text.chars().enumerate() {
        let Some(d) = ch.to_digit(10) else { continue };
        let x0 = x + k * 4 * scale;
        for (row, bits) in DIGITS[d as usize].iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            put(x0 + col * scale + dx, y + row * scale + dy, rgb);
                        }
                    }
                }
            }
        }
    }
}
