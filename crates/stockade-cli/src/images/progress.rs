//! `stockade pull`'s progress on stderr.
//!
//! On a terminal: one line per layer — short digest, state, a bar, bytes
//! done/total, rate, ETA — redrawn in place (cursor up, rewrite), at most
//! ten times a second unless a layer changes state. Elsewhere (a log, a
//! pipe, CI): one plain line per event — resolved, each layer started,
//! every quarter of its bytes (or every 10 s when slower), unpacking, done
//! — and never a carriage return. The clock is an argument, so the tests
//! drive it.

use std::io::Write;
use std::time::{Duration, Instant};

use stockade_image::{Digest, Progress};

use super::text::size;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bars redrawn in place (stderr is a terminal).
    Bars,
    /// One line per event.
    Lines,
    /// Nothing.
    Quiet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Downloading,
    Unpacking,
    Done,
    Exists,
}

impl State {
    fn word(self) -> &'static str {
        match self {
            State::Waiting => "waiting",
            State::Downloading => "downloading",
            State::Unpacking => "unpacking",
            State::Done => "done",
            State::Exists => "already exists",
        }
    }
}

#[derive(Debug)]
struct Layer {
    digest: Digest,
    total: u64,
    done: u64,
    state: State,
    /// When its first bytes came (for the rate).
    started: Option<Instant>,
    /// Quarters of its bytes already reported (line mode).
    quarters: u64,
    /// When line mode last wrote about it.
    last_line: Option<Instant>,
}

/// Turns [`Progress`] events into text on `out`.
pub struct PullProgress<W: Write> {
    out: W,
    mode: Mode,
    layers: Vec<Layer>,
    /// Lines the last redraw wrote (bars mode), to move back over.
    drawn: usize,
    last_draw: Option<Instant>,
}

/// Bars are redrawn at most this often, unless a layer changes state.
const REDRAW_EVERY: Duration = Duration::from_millis(100);
/// Line mode reports a slow layer at least this often.
const LINE_EVERY: Duration = Duration::from_secs(10);

/// The first 12 hex digits, as `docker` shows layers.
fn short(d: &Digest) -> &str {
    &d.hex()[..12]
}

impl<W: Write> PullProgress<W> {
    pub fn new(out: W, mode: Mode) -> Self {
        PullProgress {
            out,
            mode,
            layers: Vec::new(),
            drawn: 0,
            last_draw: None,
        }
    }

    fn layer(&mut self, d: &Digest) -> usize {
        if let Some(i) = self.layers.iter().position(|l| &l.digest == d) {
            return i;
        }
        self.layers.push(Layer {
            digest: d.clone(),
            total: 0,
            done: 0,
            state: State::Waiting,
            started: None,
            quarters: 0,
            last_line: None,
        });
        self.layers.len() - 1
    }

    /// Takes one event. Write errors are ignored: progress is a courtesy,
    /// and a closed stderr must not fail the pull.
    pub fn event(&mut self, p: &Progress, now: Instant) {
        if self.mode == Mode::Quiet {
            return;
        }
        let mut changed = false;
        let mut lines: Vec<String> = Vec::new();
        match p {
            Progress::Resolved { digest, layers } => {
                let fetch: u64 = layers.iter().filter(|l| !l.2).map(|l| l.1).sum();
                let n_fetch = layers.iter().filter(|l| !l.2).count();
                lines.push(format!(
                    "resolved {digest}: {} layer(s), {n_fetch} to fetch ({})",
                    layers.len(),
                    size(fetch)
                ));
                for (d, total, present) in layers {
                    let i = self.layer(d);
                    let l = &mut self.layers[i];
                    l.total = *total;
                    if *present {
                        l.state = State::Exists;
                        l.done = *total;
                        lines.push(format!("layer {}: already exists", short(d)));
                    }
                }
                changed = true;
            }
            Progress::Downloading { layer, done, total } => {
                let i = self.layer(layer);
                let l = &mut self.layers[i];
                l.done = *done;
                l.total = (*total).max(*done);
                if l.state != State::Downloading {
                    l.state = State::Downloading;
                    l.started = Some(now);
                    l.last_line = Some(now);
                    changed = true;
                    lines.push(format!(
                        "layer {}: downloading {}",
                        short(layer),
                        size(l.total)
                    ));
                } else if let Some(quarters) = l.done.saturating_mul(4).checked_div(l.total) {
                    let slow = l
                        .last_line
                        .is_some_and(|t| now.duration_since(t) >= LINE_EVERY);
                    if (quarters > l.quarters && quarters < 4) || (slow && l.done < l.total) {
                        l.quarters = l.quarters.max(quarters);
                        l.last_line = Some(now);
                        lines.push(format!(
                            "layer {}: {}% ({} of {})",
                            short(layer),
                            l.done * 100 / l.total,
                            size(l.done),
                            size(l.total)
                        ));
                    }
                }
            }
            Progress::Unpacking { layer } => {
                let i = self.layer(layer);
                self.layers[i].state = State::Unpacking;
                changed = true;
                lines.push(format!("layer {}: unpacking", short(layer)));
            }
            Progress::LayerDone { layer } => {
                let i = self.layer(layer);
                let l = &mut self.layers[i];
                if l.state != State::Exists {
                    l.state = State::Done;
                    l.done = l.total;
                    lines.push(format!("layer {}: done", short(layer)));
                }
                changed = true;
            }
        }
        match self.mode {
            Mode::Lines => {
                for line in lines {
                    let _ = writeln!(self.out, "{line}");
                }
            }
            Mode::Bars => {
                let due = self
                    .last_draw
                    .is_none_or(|t| now.duration_since(t) >= REDRAW_EVERY);
                if changed || due {
                    self.redraw(now);
                }
            }
            Mode::Quiet => {}
        }
    }

    /// The last redraw, so that the final states show.
    pub fn finish(&mut self) {
        if self.mode == Mode::Bars && !self.layers.is_empty() {
            self.redraw(Instant::now());
        }
        let _ = self.out.flush();
    }

    fn redraw(&mut self, now: Instant) {
        let mut buf = String::new();
        if self.drawn > 0 {
            buf.push_str(&format!("\x1b[{}A", self.drawn));
        }
        for l in &self.layers {
            buf.push_str("\r\x1b[2K");
            buf.push_str(&bar_line(l, now));
            buf.push('\n');
        }
        self.drawn = self.layers.len();
        self.last_draw = Some(now);
        let _ = self.out.write_all(buf.as_bytes());
        let _ = self.out.flush();
    }
}

/// One layer's bar: `0123456789ab  downloading     [=====>    ]  1.20 MiB / 4.00 MiB  2.10 MiB/s  ETA 2s`.
fn bar_line(l: &Layer, now: Instant) -> String {
    const WIDTH: usize = 24;
    let frac = if l.total == 0 {
        if matches!(l.state, State::Done | State::Exists) {
            1.0
        } else {
            0.0
        }
    } else {
        l.done as f64 / l.total as f64
    };
    let filled = ((frac * WIDTH as f64) as usize).min(WIDTH);
    let mut bar = "=".repeat(filled);
    if filled < WIDTH && l.state == State::Downloading {
        bar.push('>');
    }
    let mut line = format!(
        "{}  {:<14} [{bar:<WIDTH$}] {} / {}",
        short(&l.digest),
        l.state.word(),
        size(l.done),
        size(l.total)
    );
    if l.state == State::Downloading {
        if let Some(start) = l.started {
            let secs = now.duration_since(start).as_secs_f64();
            if secs >= 0.5 && l.done > 0 {
                let rate = l.done as f64 / secs;
                line.push_str(&format!("  {}/s", size(rate as u64)));
                let left = l.total.saturating_sub(l.done) as f64 / rate;
                line.push_str(&format!("  ETA {}", eta(left)));
            }
        }
    }
    line
}

fn eta(secs: f64) -> String {
    let s = secs.ceil() as u64;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    fn feed(mode: Mode, events: &[(Progress, u64)]) -> String {
        let t0 = Instant::now();
        let mut p = PullProgress::new(Vec::new(), mode);
        for (e, ms) in events {
            p.event(e, t0 + Duration::from_millis(*ms));
        }
        p.finish();
        String::from_utf8(p.out).unwrap()
    }

    fn download(layer: Digest, total: u64, step: u64, every_ms: u64) -> Vec<(Progress, u64)> {
        let mut ev = vec![(
            Progress::Resolved {
                digest: d('f'),
                layers: vec![(layer.clone(), total, false), (d('e'), 7, true)],
            },
            0,
        )];
        let mut done = 0;
        let mut t = 0;
        while done < total {
            done = (done + step).min(total);
            t += every_ms;
            ev.push((
                Progress::Downloading {
                    layer: layer.clone(),
                    done,
                    total,
                },
                t,
            ));
        }
        ev.push((
            Progress::Unpacking {
                layer: layer.clone(),
            },
            t + 1,
        ));
        ev.push((Progress::LayerDone { layer }, t + 2));
        ev
    }

    #[test]
    fn line_mode_reports_each_quarter_once_and_never_rewrites_a_line() {
        let out = feed(Mode::Lines, &download(d('a'), 1000, 10, 1));
        assert!(!out.contains('\r') && !out.contains('\x1b'), "{out:?}");
        let layer: Vec<&str> = out.lines().filter(|l| l.contains("aaaaaaaaaaaa")).collect();
        assert_eq!(
            layer,
            [
                "layer aaaaaaaaaaaa: downloading 1000 B",
                "layer aaaaaaaaaaaa: 25% (250 B of 1000 B)",
                "layer aaaaaaaaaaaa: 50% (500 B of 1000 B)",
                "layer aaaaaaaaaaaa: 75% (750 B of 1000 B)",
                "layer aaaaaaaaaaaa: unpacking",
                "layer aaaaaaaaaaaa: done",
            ],
            "{out}"
        );
        assert!(
            out.starts_with(&format!(
                "resolved {}: 2 layer(s), 1 to fetch (1000 B)",
                d('f')
            )),
            "{out}"
        );
        assert!(out.contains("layer eeeeeeeeeeee: already exists"), "{out}");
    }

    #[test]
    fn line_mode_reports_a_slow_layer_every_ten_seconds() {
        // 1% every 2 s: quarters alone would leave 50 s between lines.
        let out = feed(Mode::Lines, &download(d('a'), 100, 1, 2000));
        let pcts: Vec<&str> = out.lines().filter(|l| l.contains('%')).collect();
        assert!(pcts.len() >= 19, "{out}");
        assert!(pcts.len() <= 24, "{out}");
    }

    #[test]
    fn bar_mode_redraws_in_place_and_throttles() {
        let out = feed(Mode::Bars, &download(d('a'), 1000, 1, 1));
        // Every redraw moves back over the two layer lines it drew before.
        let redraws = out.matches("\x1b[2A").count();
        assert!(redraws >= 3, "{out:?}");
        // 1000 events over one second: about ten timed redraws, plus the
        // state changes, not one per event.
        assert!(redraws < 30, "{redraws} redraws");
        let last = out.rsplit("\x1b[2A").next().unwrap();
        assert!(last.contains("aaaaaaaaaaaa  done"), "{last:?}");
        assert!(last.contains("eeeeeeeeeeee  already exists"), "{last:?}");
        assert_eq!(out.matches('\n').count() % 2, 0, "{out:?}");
    }

    #[test]
    fn a_bar_shows_rate_and_eta_while_downloading() {
        let t0 = Instant::now();
        let l = Layer {
            digest: d('a'),
            total: 4 << 20,
            done: 1 << 20,
            state: State::Downloading,
            started: Some(t0),
            quarters: 0,
            last_line: None,
        };
        let line = bar_line(&l, t0 + Duration::from_secs(2));
        assert!(line.starts_with("aaaaaaaaaaaa  downloading "), "{line}");
        assert!(line.contains("1.00 MiB / 4.00 MiB"), "{line}");
        assert!(line.contains("512 KiB/s"), "{line}");
        assert!(line.ends_with("ETA 6s"), "{line}");
        assert_eq!(eta(3700.0), "1h01m");
    }

    #[test]
    fn quiet_mode_writes_nothing() {
        assert_eq!(feed(Mode::Quiet, &download(d('a'), 100, 10, 1)), "");
    }
}
