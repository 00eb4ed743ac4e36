//! `stockade ps` (the daemon's sandboxes with what they use now) and
//! `stockade top` (the processes inside one), as `docker ps` / `docker
//! stats --no-stream` and `docker top` show them.

use anyhow::bail;
use clap::Args;
use serde_json::Value;

use crate::daemon::{human, SocketArg};

/// How a listing is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON array, every field the daemon gives.
    Json,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Also show destroyed, expired and dead sandboxes.
    #[arg(short, long)]
    pub all: bool,
    /// Print only the ids, one a line.
    #[arg(short, long)]
    pub quiet: bool,
    /// `table`, or `json`: each sandbox as `stockade inspect` prints it
    /// (policy, usage, current, processes or report).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// The figures of one line of `ps`, from a sandbox's JSON (`GET
/// /v1/sandboxes/{id}`). A sandbox that has ended shows its final usage
/// and holds nothing now.
#[derive(Debug, Default, PartialEq)]
struct Line {
    /// CPU time over wall time since it started, in percent of one CPU.
    cpu_percent: f64,
    memory: u64,
    memory_limit: Option<u64>,
    pids: u64,
    disk: u64,
}

impl Line {
    fn of(v: &Value) -> Line {
        let running = v["state"] == "running";
        let usage = if v["usage"].is_object() {
            &v["usage"]
        } else {
            &v["report"]["usage"]
        };
        let wall = usage["wall_seconds"].as_f64().unwrap_or(0.0);
        let cpu = usage["cpu_seconds"].as_f64().unwrap_or(0.0);
        let n = |x: &Value| x.as_u64().unwrap_or(0);
        Line {
            cpu_percent: if wall > 0.0 { cpu / wall * 100.0 } else { 0.0 },
            memory: if running {
                n(&v["current"]["memory_bytes"])
            } else {
                0
            },
            memory_limit: memory_limit(&v["policy"]),
            pids: if running { n(&v["current"]["pids"]) } else { 0 },
            disk: n(&usage["disk_bytes"]),
        }
    }
}

/// The policy's memory limit in bytes (the API writes it like "16G").
fn memory_limit(policy: &Value) -> Option<u64> {
    let m = &policy["limits"]["memory"];
    m.as_u64().or_else(|| {
        m.as_str()
            .and_then(|s| s.parse::<stockade_policy::ByteSize>().ok())
            .map(|b| b.bytes())
    })
}

/// Lists the sandboxes with their usage: one `GET` each, so the figures
/// are the ones of this moment.
pub fn ps(args: PsArgs) -> anyhow::Result<u8> {
    let client = args.socket.client();
    let state = if args.all { None } else { Some("running") };
    let list = client.list(&[], state)?;
    if args.quiet {
        for sb in &list {
            println!("{}", sb.id);
        }
        return Ok(0);
    }
    // A sandbox that ended between the list and its `GET` is shown as
    // the list gave it.
    let full: Vec<Value> = list
        .iter()
        .map(|sb| {
            client
                .get_raw(&sb.id)
                .unwrap_or_else(|_| serde_json::to_value(sb).unwrap_or(Value::Null))
        })
        .collect();
    if args.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&full)?);
        return Ok(0);
    }
    println!(
        "{:<12}  {:<16} {:<9} {:>6}  {:>19}  {:>5} {:>8} {:>7}  REASON",
        "ID", "NAME", "STATE", "CPU %", "MEM USAGE / LIMIT", "PIDS", "DISK", "AGE"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    for v in &full {
        let l = Line::of(v);
        let s = |k: &str| v[k].as_str().unwrap_or("-").to_string();
        let mem = format!(
            "{} / {}",
            human(l.memory),
            l.memory_limit.map_or("-".into(), human)
        );
        println!(
            "{:<12}  {:<16} {:<9} {:>5.1}%  {:>19}  {:>5} {:>8} {:>7}  {}",
            s("id"),
            s("name"),
            s("state"),
            l.cpu_percent,
            mem,
            l.pids,
            human(l.disk),
            age(now - v["created_at"].as_f64().unwrap_or(now)),
            v["reason"].as_str().unwrap_or("")
        );
    }
    Ok(0)
}

/// `45s`, `12m`, `3h`, `2d`: how long ago, as `docker ps` rounds it.
fn age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Columns, as `ps -o` takes them: pid, hostpid, ppid, user, uid,
    /// stat, %cpu, rss, time, etime, cmd (comma-separated).
    #[arg(
        short = 'o',
        value_name = "COLUMNS",
        default_value = "pid,hostpid,user,%cpu,rss,time,cmd"
    )]
    pub columns: String,
    /// `table`, or `json`: every field the daemon gives.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The sandbox's id or name.
    pub id: String,
}

/// One `top` column: its heading, whether it is right-aligned, and its
/// value for a process.
struct Column {
    head: &'static str,
    right: bool,
    value: fn(&Value) -> String,
}

fn column(name: &str) -> Option<Column> {
    Some(match name {
        "pid" => Column {
            head: "PID",
            right: true,
            value: |p| p["pid"].as_i64().unwrap_or(0).to_string(),
        },
        "hostpid" | "host_pid" => Column {
            head: "HOST PID",
            right: true,
            value: |p| p["host_pid"].as_i64().unwrap_or(0).to_string(),
        },
        "ppid" => Column {
            head: "PPID",
            right: true,
            value: |p| p["ppid"].as_i64().unwrap_or(0).to_string(),
        },
        "user" => Column {
            head: "USER",
            right: false,
            value: |p| p["user"].as_str().unwrap_or("?").to_string(),
        },
        "uid" => Column {
            head: "UID",
            right: true,
            value: |p| p["uid"].as_i64().unwrap_or(0).to_string(),
        },
        "stat" | "state" | "s" => Column {
            head: "STAT",
            right: false,
            value: |p| p["state"].as_str().unwrap_or("?").to_string(),
        },
        "%cpu" | "pcpu" => Column {
            head: "%CPU",
            right: true,
            value: |p| format!("{:.1}", p["cpu_percent"].as_f64().unwrap_or(0.0)),
        },
        "rss" => Column {
            head: "RSS",
            right: true,
            value: |p| human(p["rss_bytes"].as_u64().unwrap_or(0)),
        },
        "time" | "cputime" => Column {
            head: "TIME",
            right: true,
            value: |p| clock(p["cpu_seconds"].as_f64().unwrap_or(0.0)),
        },
        "etime" => Column {
            head: "ELAPSED",
            right: true,
            value: |p| clock(p["elapsed_seconds"].as_f64().unwrap_or(0.0)),
        },
        "cmd" | "args" | "command" => Column {
            head: "CMD",
            right: false,
            value: |p| {
                p["cmd"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default()
            },
        },
        _ => return None,
    })
}

/// `H:MM:SS`, as `ps` prints times.
fn clock(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// The processes running in a sandbox, through the daemon (which reads
/// them from the host's `/proc`).
pub fn top(args: TopArgs) -> anyhow::Result<u8> {
    let mut cols = Vec::new();
    for name in args.columns.split(',').map(str::trim) {
        match column(&name.to_ascii_lowercase()) {
            Some(c) => cols.push(c),
            None => bail!(
                "-o: unknown column {name:?}; choose from pid, hostpid, ppid, user, uid, stat, %cpu, rss, time, etime, cmd"
            ),
        }
    }
    let procs = args.socket.client().top(&args.id)?;
    if args.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&procs)?);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = procs
        .iter()
        .map(|p| cols.iter().map(|c| (c.value)(p)).collect())
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([c.head.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let print = |cells: &[&str]| {
        let mut line = String::new();
        for (i, (cell, c)) in cells.iter().zip(&cols).enumerate() {
            let w = widths[i];
            let last = i + 1 == cols.len();
            if c.right {
                line.push_str(&format!("{cell:>w$}"));
            } else if last {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}"));
            }
            if !last {
                line.push_str("  ");
            }
        }
        println!("{}", line.trim_end());
    };
    print(&cols.iter().map(|c| c.head).collect::<Vec<_>>());
    for r in &rows {
        print(&r.iter().map(String::as_str).collect::<Vec<_>>());
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_running_line_shows_what_it_holds_now_against_its_limit() {
        let v = json!({
            "state": "running",
            "policy": {"limits": {"memory": "512M"}},
            "usage": {"wall_seconds": 10.0, "cpu_seconds": 2.5, "disk_bytes": 7},
            "current": {"memory_bytes": 52_428_800u64, "pids": 3},
        });
        assert_eq!(
            Line::of(&v),
            Line {
                cpu_percent: 25.0,
                memory: 52_428_800,
                memory_limit: Some(512 << 20),
                pids: 3,
                disk: 7,
            }
        );
    }

    #[test]
    fn an_ended_line_holds_nothing_and_keeps_its_final_usage() {
        let v = json!({
            "state": "destroyed",
            "policy": {"limits": {"memory": "1G"}},
            "report": {"usage": {"wall_seconds": 4.0, "cpu_seconds": 1.0, "disk_bytes": 9}},
        });
        let l = Line::of(&v);
        assert_eq!((l.memory, l.pids, l.disk), (0, 0, 9));
        assert_eq!(l.cpu_percent, 25.0);
    }

    #[test]
    fn ages_and_times_read_as_ps_prints_them() {
        assert_eq!(age(59.9), "59s");
        assert_eq!(age(600.0), "10m");
        assert_eq!(age(3.0 * 86400.0), "3d");
        assert_eq!(clock(3725.0), "1:02:05");
    }

    #[test]
    fn unknown_top_columns_are_refused_by_name() {
        assert!(column("pid").is_some() && column("%cpu").is_some());
        assert!(column("vsz").is_none());
    }
}
