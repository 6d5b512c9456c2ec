//! The pairing QR code: encoding a pairing link and rendering it for a
//! terminal, as a PNG, or as an SVG.
//!
//! A pairing link (`https://host/p#<BASE32>`, or `http://<lan ip>:<port>/p?n=<nonce>#<BASE32>`
//! from `tandem up`; see
//! [`tandem_proto::qr::QrPayload::to_link`]) is encoded in two segments:
//! the part up to and including `#` in byte mode and the upper-case base32
//! payload in alphanumeric mode ([`tandem_proto::qr::link_segments`]). That
//! keeps a realistic link at QR version 7 or lower at error-correction level
//! M, small enough for a phone camera to read from a terminal.
//!
//! Every rendering has a 4-module quiet zone and puts dark modules on a light
//! background, which is what QR decoders expect.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use qrcode::bits::Bits;
use qrcode::types::QrError as EncodeError;
use qrcode::{Color, EcLevel, QrCode, Version};

/// Width of the quiet zone (the light border every QR code needs), in modules.
pub const QUIET_ZONE: usize = 4;

/// Largest side of a PNG [`PairingQr::png`] writes, in pixels.
pub const MAX_PNG_SIDE: u32 = 4096;

/// The error-correction level of pairing codes: M recovers about 15 % of the
/// code, enough for a screen photographed at an angle.
const EC_LEVEL: EcLevel = EcLevel::M;

/// Why a pairing QR code could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum QrError {
    /// The link does not fit even the largest QR code (version 40).
    #[error(
        "the pairing link ({len} bytes) is too long for any QR code at error-correction level M"
    )]
    TooLong {
        /// The link's length in bytes.
        len: usize,
    },
    /// The QR encoder refused the data for another reason.
    #[error("could not encode the pairing link as a QR code: {0}")]
    Encode(#[source] EncodeError),
    /// The PNG scale is zero or makes the image too large.
    #[error(
        "a PNG scale of {scale} pixels per module is not possible for this code \
         (it must be at least 1 and the image at most {MAX_PNG_SIDE} pixels wide)"
    )]
    BadScale {
        /// The requested pixels per module.
        scale: u32,
    },
    /// The PNG encoder failed.
    #[error("could not encode the QR code as PNG: {0}")]
    Png(#[from] png::EncodingError),
    /// Writing the image file failed.
    #[error("could not write the QR code to {}: {source}", path.display())]
    Write {
        /// The file that could not be written.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A pairing link encoded as a QR code, ready to be rendered.
#[derive(Clone)]
pub struct PairingQr {
    /// The encoded code.
    code: QrCode,
    /// Whether each module is dark, row by row (`width * width` entries,
    /// without the quiet zone).
    dark: Vec<bool>,
}

impl std::fmt::Debug for PairingQr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairingQr")
            .field("version", &self.version())
            .field("width", &self.width())
            .finish_non_exhaustive()
    }
}

impl PairingQr {
    /// Encode a pairing link at error-correction level M in the smallest QR
    /// version that holds it.
    ///
    /// When [`tandem_proto::qr::link_segments`] splits the link, the part up
    /// to and including `#` is encoded in byte mode and the base32 payload in
    /// alphanumeric mode; any other text is encoded in plain byte mode.
    ///
    /// # Errors
    /// [`QrError::TooLong`] if the link does not fit version 40;
    /// [`QrError::Encode`] if the encoder fails for another reason.
    pub fn new(link: &str) -> Result<Self, QrError> {
        let segments = tandem_proto::qr::link_segments(link);
        for v in 1..=40 {
            let mut bits = Bits::new(Version::Normal(v));
            let pushed = match segments {
                Some((head, payload)) => bits
                    .push_byte_data(head.as_bytes())
                    .and_then(|()| bits.push_alphanumeric_data(payload.as_bytes())),
                None => bits.push_byte_data(link.as_bytes()),
            }
            .and_then(|()| bits.push_terminator(EC_LEVEL));
            match pushed {
                Ok(()) => {
                    let code = QrCode::with_bits(bits, EC_LEVEL).map_err(QrError::Encode)?;
                    let dark = code.to_colors().into_iter().map(|c| c == Color::Dark).collect();
                    return Ok(Self { code, dark });
                }
                Err(EncodeError::DataTooLong) => {}
                Err(e) => return Err(QrError::Encode(e)),
            }
        }
        Err(QrError::TooLong { len: link.len() })
    }

    /// The QR version (1 to 40): the code is `17 + 4 × version` modules wide.
    #[must_use]
    pub fn version(&self) -> i16 {
        match self.code.version() {
            Version::Normal(v) | Version::Micro(v) => v,
        }
    }

    /// The number of modules per side, without the quiet zone.
    #[must_use]
    pub fn width(&self) -> usize {
        self.code.width()
    }

    /// The number of modules per side including the quiet zone on both sides.
    fn side(&self) -> usize {
        self.width() + 2 * QUIET_ZONE
    }

    /// Whether the module at (`x`, `y`) is dark, in coordinates that include
    /// the quiet zone. Everything outside the code itself is light.
    fn is_dark(&self, x: usize, y: usize) -> bool {
        let w = self.width();
        match (x.checked_sub(QUIET_ZONE), y.checked_sub(QUIET_ZONE)) {
            (Some(x), Some(y)) if x < w && y < w => {
                self.dark.get(y * w + x).copied().unwrap_or(false)
            }
            _ => false,
        }
    }

    /// The code for a terminal with a **dark background** (the usual default
    /// of developer terminals), using Unicode half blocks (`▀ ▄ █` and space),
    /// two modules per character vertically so that modules come out about
    /// square, with a 4-module quiet zone.
    ///
    /// Decoders want dark modules on a light background. Here the *light*
    /// modules, quiet zone included, are drawn as blocks in the terminal's
    /// (light) text colour and the dark modules are left as spaces showing the
    /// (dark) background, so on a dark theme the code appears dark-on-light
    /// as printed on paper. On a light-background terminal this form appears
    /// inverted (which many, but not all, scanners still read): use
    /// [`Self::terminal_inverted`] there.
    ///
    /// Every line is `width() + 8` characters followed by `\n`; an odd last
    /// row of modules is completed with a light half row (part of the quiet
    /// zone).
    #[must_use]
    pub fn terminal(&self) -> String {
        self.half_blocks(false)
    }

    /// The code for a terminal with a **light background**: the dark modules
    /// are drawn as blocks in the (dark) text colour and the light modules and
    /// quiet zone are spaces showing the (light) background. Otherwise as
    /// [`Self::terminal`], of which it is the character-by-character
    /// complement.
    #[must_use]
    pub fn terminal_inverted(&self) -> String {
        self.half_blocks(true)
    }

    /// Half-block rendering; `draw_dark` chooses whether blocks stand for dark
    /// modules (light-background terminals) or light ones (dark backgrounds).
    fn half_blocks(&self, draw_dark: bool) -> String {
        let side = self.side();
        let mut out = String::with_capacity(side.div_ceil(2) * (side * 3 + 1));
        for y in (0..side).step_by(2) {
            for x in 0..side {
                // A module past the last row is light: it extends the quiet zone.
                let top = self.is_dark(x, y) == draw_dark;
                let bottom = (y + 1 < side && self.is_dark(x, y + 1)) == draw_dark;
                out.push(match (top, bottom) {
                    (true, true) => '█',
                    (true, false) => '▀',
                    (false, true) => '▄',
                    (false, false) => ' ',
                });
            }
            out.push('\n');
        }
        out
    }

    /// The code as an 8-bit grayscale PNG, `scale` pixels per module, with a
    /// 4-module quiet zone: black modules on white.
    ///
    /// # Errors
    /// [`QrError::BadScale`] if `scale` is 0 or the image would be wider than
    /// [`MAX_PNG_SIDE`] pixels; [`QrError::Png`] if encoding fails.
    pub fn png(&self, scale: u32) -> Result<Vec<u8>, QrError> {
        let side = self.side();
        let dark: Vec<bool> = (0..side)
            .flat_map(|y| (0..side).map(move |x| (x, y)))
            .map(|(x, y)| self.is_dark(x, y))
            .collect();
        encode_png(&dark, side, side, scale)
    }

    /// Write [`Self::png`] to `path`, mode 0600, replacing (never
    /// following) a symbolic link there ([`crate::datadir::write_user_file`]).
    ///
    /// # Errors
    /// As [`Self::png`], and [`QrError::Write`] if the file cannot be written.
    pub fn write_png(&self, path: &Path, scale: u32) -> Result<(), QrError> {
        let png = self.png(scale)?;
        crate::datadir::write_user_file(path, &png)
            .map_err(|source| QrError::Write { path: path.into(), source })
    }

    /// The code as a standalone SVG document: black modules on a white
    /// background with a 4-module quiet zone. The `viewBox` is in modules
    /// (`0 0 N N` with `N = width() + 8`); `width` and `height` suggest 8 px
    /// per module, and the image scales cleanly to any size.
    #[must_use]
    pub fn svg(&self) -> String {
        let side = self.side();
        let mut svg = format!(
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8"?>"#,
                "\n",
                r#"<svg xmlns="http://www.w3.org/2000/svg" version="1.1" viewBox="0 0 {n} {n}""#,
                r#" width="{px}" height="{px}" shape-rendering="crispEdges">"#,
                "\n",
                r##"<rect x="0" y="0" width="{n}" height="{n}" fill="#ffffff"/>"##,
                "\n",
                r##"<path fill="#000000" d=""##,
            ),
            n = side,
            px = side * 8,
        );
        // One rectangle per horizontal run of dark modules.
        for y in 0..side {
            let mut x = 0;
            while x < side {
                if self.is_dark(x, y) {
                    let start = x;
                    while x < side && self.is_dark(x, y) {
                        x += 1;
                    }
                    // Writing to a String cannot fail.
                    let _ = write!(svg, "M{start} {y}h{}v1h-{}z", x - start, x - start);
                } else {
                    x += 1;
                }
            }
        }
        svg.push_str("\"/>\n</svg>\n");
        svg
    }

    /// Write [`Self::svg`] to `path`, as [`Self::write_png`] does.
    ///
    /// # Errors
    /// [`QrError::Write`] if the file cannot be written.
    pub fn write_svg(&self, path: &Path) -> Result<(), QrError> {
        crate::datadir::write_user_file(path, self.svg().as_bytes())
            .map_err(|source| QrError::Write { path: path.into(), source })
    }
}

/// Encode a grid of modules (`dark`, row by row, `width × height`) as an
/// 8-bit grayscale PNG with `scale` pixels per module: black for dark, white
/// for light.
fn encode_png(dark: &[bool], width: usize, height: usize, scale: u32) -> Result<Vec<u8>, QrError> {
    let px = |modules: usize| {
        u32::try_from(modules)
            .ok()
            .and_then(|m| m.checked_mul(scale))
            .filter(|&p| scale > 0 && p <= MAX_PNG_SIDE)
            .ok_or(QrError::BadScale { scale })
    };
    let (px_w, px_h) = (px(width)?, px(height)?);
    // Both products are at most MAX_PNG_SIDE, so these conversions are lossless.
    let scale_px = scale as usize;
    let mut pixels = Vec::with_capacity(px_w as usize * px_h as usize);
    for row in dark.chunks(width.max(1)).take(height) {
        let line: Vec<u8> = row
            .iter()
            .flat_map(|&d| std::iter::repeat_n(if d { 0 } else { 255 }, scale_px))
            .collect();
        for _ in 0..scale {
            pixels.extend_from_slice(&line);
        }
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, px_w, px_h);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&pixels)?;
    writer.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

    use std::process::Command;

    use tandem_proto::PublicKey;
    use tandem_proto::qr::QrPayload;

    use super::*;

    /// A link like the one `tandem` shows when it serves the relay on the LAN.
    fn lan_link() -> String {
        QrPayload {
            desktop: PublicKey([0xa7; 32]),
            secret: [0x3c; 32],
            expires_at: 1_767_225_600,
            relay: None,
        }
        // As `tandem up` shows it: a fresh nonce in the query of every code.
        .to_link("http://192.168.1.20:7878/p?n=K3VQ7ZTA")
    }

    /// Decode the QR code in a PNG with the real decoder `zbarimg`.
    fn zbar(png: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("code.png");
        std::fs::write(&file, png).unwrap();
        let out = match Command::new("zbarimg").arg("--raw").arg("-q").arg(&file).output() {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "`zbarimg` is not installed; these tests decode the QR code with it: \
                 install the Debian package zbar-tools (apt-get install -y zbar-tools)"
            ),
            Err(e) => panic!("could not run zbarimg: {e}"),
        };
        assert!(
            out.status.success(),
            "zbarimg found no QR code ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        text.strip_suffix('\n').unwrap_or(&text).to_owned()
    }

    /// Parse a half-block rendering back into modules: `(dark, width, height)`.
    /// `blocks_are_dark` says what the blocks stand for.
    fn parse_half_blocks(text: &str, blocks_are_dark: bool) -> (Vec<bool>, usize, usize) {
        let lines: Vec<Vec<char>> = text.lines().map(|l| l.chars().collect()).collect();
        let width = lines[0].len();
        assert!(lines.iter().all(|l| l.len() == width), "ragged lines");
        let mut dark = vec![false; width * lines.len() * 2];
        for (row, line) in lines.iter().enumerate() {
            for (x, c) in line.iter().enumerate() {
                let (top, bottom) = match c {
                    '█' => (true, true),
                    '▀' => (true, false),
                    '▄' => (false, true),
                    ' ' => (false, false),
                    other => panic!("unexpected character {other:?}"),
                };
                dark[2 * row * width + x] = top == blocks_are_dark;
                dark[(2 * row + 1) * width + x] = bottom == blocks_are_dark;
            }
        }
        (dark, width, lines.len() * 2)
    }

    /// Parse the SVG's path (`M{x} {y}h{n}v1h-{n}z` runs) back into modules.
    fn parse_svg(svg: &str, side: usize) -> Vec<bool> {
        let d = svg.split(" d=\"").nth(1).unwrap().split('"').next().unwrap();
        let mut dark = vec![false; side * side];
        for run in d.split('z').filter(|r| !r.is_empty()) {
            let rest = run.strip_prefix('M').unwrap();
            let (x, rest) = rest.split_once(' ').unwrap();
            let (y, rest) = rest.split_once('h').unwrap();
            let (n, rest) = rest.split_once('v').unwrap();
            assert_eq!(rest, format!("1h-{n}"));
            let (x, y, n): (usize, usize, usize) =
                (x.parse().unwrap(), y.parse().unwrap(), n.parse().unwrap());
            for i in x..x + n {
                assert!(!dark[y * side + i], "overlapping runs");
                dark[y * side + i] = true;
            }
        }
        dark
    }

    #[test]
    fn qr_a_realistic_link_fits_version_7() {
        let link = lan_link();
        let qr = PairingQr::new(&link).unwrap();
        eprintln!("{} characters -> version {}", link.len(), qr.version());
        assert!((1..=7).contains(&qr.version()), "version {}", qr.version());
        assert_eq!(qr.width(), 17 + 4 * qr.version() as usize);
        // The two-segment encoding beats plain byte mode for this link.
        let mut lower = link.clone();
        lower.make_ascii_lowercase();
        assert!(PairingQr::new(&lower).unwrap().version() > qr.version());
    }

    #[test]
    fn qr_png_decodes_to_the_exact_link() {
        let link = lan_link();
        let qr = PairingQr::new(&link).unwrap();
        let png = qr.png(6).unwrap();
        assert_eq!(zbar(&png), link);

        // Grayscale, scale × (width + 8) pixels, white quiet zone.
        let decoder = png::Decoder::new(std::io::Cursor::new(&png));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        let side = (qr.width() + 8) * 6;
        assert_eq!((info.width as usize, info.height as usize), (side, side));
        assert_eq!(info.color_type, png::ColorType::Grayscale);
        assert!(buf[..side * 6 * 4].iter().all(|&p| p == 255), "quiet zone not white");
        assert!(buf.contains(&0));

        // write_png writes the same bytes.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pair.png");
        qr.write_png(&path, 6).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), png);
    }

    #[test]
    fn qr_plain_byte_mode_links_decode_too() {
        // Not upper-case base32 after '#': encoded in byte mode, case kept.
        let link = "https://relay.example.com/p#notBase32-payload!";
        let qr = PairingQr::new(link).unwrap();
        assert_eq!(zbar(&qr.png(4).unwrap()), link);
    }

    #[test]
    fn qr_terminal_renderings_scan() {
        let link = lan_link();
        let qr = PairingQr::new(&link).unwrap();
        let side = qr.width() + 8;
        let normal = qr.terminal();
        let inverted = qr.terminal_inverted();
        print!("{normal}");
        for text in [&normal, &inverted] {
            assert_eq!(text.lines().count(), side.div_ceil(2));
            assert!(text.lines().all(|l| l.chars().count() == side));
            assert!(text.ends_with('\n'));
        }
        // Complements of each other, character by character.
        let complement = |c| match c {
            '█' => ' ',
            ' ' => '█',
            '▀' => '▄',
            '▄' => '▀',
            other => other,
        };
        assert_eq!(normal.chars().map(complement).collect::<String>(), inverted);
        // The dark-background form draws the quiet zone as blocks.
        assert!(normal.lines().next().unwrap().chars().all(|c| c == '█'));

        // terminal(): blocks are light modules (shown light on a dark theme).
        let (dark, w, h) = parse_half_blocks(&normal, false);
        assert_eq!(zbar(&encode_png(&dark, w, h, 8).unwrap()), link);
        // terminal_inverted(): blocks are dark modules (on a light theme).
        let (dark_inv, w, h) = parse_half_blocks(&inverted, true);
        assert_eq!(dark_inv, dark);
        assert_eq!(zbar(&encode_png(&dark_inv, w, h, 8).unwrap()), link);
        // Same modules as the PNG.
        for y in 0..side {
            for x in 0..side {
                assert_eq!(dark[y * w + x], qr.is_dark(x, y));
            }
        }
    }

    #[test]
    fn qr_svg_is_a_document_with_the_same_modules() {
        let link = lan_link();
        let qr = PairingQr::new(&link).unwrap();
        let side = qr.width() + 8;
        let svg = qr.svg();
        assert!(svg.starts_with("<?xml"));
        assert!(svg.contains("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.contains(&format!("viewBox=\"0 0 {side} {side}\"")));
        assert!(svg.trim_end().ends_with("</svg>"));
        let dark = parse_svg(&svg, side);
        assert!((0..side * side).all(|i| dark[i] == qr.is_dark(i % side, i / side)));
        // The modules it draws are a scannable code.
        assert_eq!(zbar(&encode_png(&dark, side, side, 8).unwrap()), link);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pair.svg");
        qr.write_svg(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), svg);
    }

    #[test]
    fn qr_too_long_or_bad_input_is_an_error() {
        let huge = format!("https://relay.example.com/p#{}", "A".repeat(5000));
        assert!(
            matches!(PairingQr::new(&huge), Err(QrError::TooLong { len }) if len == huge.len())
        );
        let huge_bytes = format!("https://relay.example.com/p#{}", "a".repeat(3000));
        let err = PairingQr::new(&huge_bytes).unwrap_err();
        assert!(err.to_string().contains("too long for any QR code"), "{err}");
        // The largest code still renders.
        let max = format!("https://relay.example.com/p#{}", "a".repeat(2300));
        let qr = PairingQr::new(&max).unwrap();
        assert_eq!(qr.version(), 40);

        let qr = PairingQr::new(&lan_link()).unwrap();
        assert!(matches!(qr.png(0), Err(QrError::BadScale { scale: 0 })));
        assert!(matches!(qr.png(1000), Err(QrError::BadScale { scale: 1000 })));
        assert!(matches!(qr.png(u32::MAX), Err(QrError::BadScale { .. })));
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/dir/pair.png");
        let err = qr.write_png(&missing, 4).unwrap_err();
        assert!(matches!(err, QrError::Write { .. }));
        assert!(err.to_string().contains("no/such/dir/pair.png"), "{err}");
    }
}
