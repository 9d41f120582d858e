//! `journal-replay`: rebuild a volume image from a gateway journal, or list a journal.
//!
//! ```text
//! journal-replay JOURNAL IMAGE [--volume NAME] [--upto SEQ] [--json]
//! journal-replay --dump JOURNAL [--json]
//! ```
//!
//! Exit status: 0 when the replay (or listing) ran, including when it stopped at a torn or
//! damaged record (the summary says where and why); 1 when the journal cannot be read at all
//! (bad header, I/O error), the volume is ambiguous, or the image cannot be written; 2 for a
//! usage error.

use std::path::PathBuf;
use std::process::ExitCode;

use gw_journal::replay::{dump, replay, Options};

const USAGE: &str = "usage: journal-replay JOURNAL IMAGE [--volume NAME] [--upto SEQ] [--json]
       journal-replay --dump JOURNAL [--json]

Applies the journal's updates of one volume, in sequence order, onto IMAGE (a raw file,
created if missing): writes are written, trims and zeroes read back as zeroes. Stops at a
torn or damaged record and reports it. --volume may be left out when the journal holds one
volume; --upto applies only updates with seq <= SEQ (sequence numbers as --dump shows them).
--dump lists every record instead.";

enum Cmd {
    Replay { journal: PathBuf, image: PathBuf, opts: Options, json: bool },
    Dump { journal: PathBuf, json: bool },
    Help,
}

fn parse(args: Vec<String>) -> Result<Cmd, String> {
    let mut positional = Vec::new();
    let mut opts = Options::default();
    let mut json = false;
    let mut dump = false;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => return Ok(Cmd::Help),
            "--json" => json = true,
            "--dump" => dump = true,
            "--volume" => opts.volume = Some(it.next().ok_or("--volume needs a NAME")?),
            "--upto" => {
                let v = it.next().ok_or("--upto needs a SEQ")?;
                opts.upto = Some(v.parse().map_err(|_| format!("--upto: `{v}` is not a sequence number"))?);
            }
            s if s.starts_with("--volume=") => opts.volume = Some(s["--volume=".len()..].to_owned()),
            s if s.starts_with("--upto=") => {
                let v = &s["--upto=".len()..];
                opts.upto = Some(v.parse().map_err(|_| format!("--upto: `{v}` is not a sequence number"))?);
            }
            s if s.starts_with('-') && s.len() > 1 => return Err(format!("unknown option `{s}`")),
            _ => positional.push(PathBuf::from(a)),
        }
    }
    if dump {
        if opts.volume.is_some() || opts.upto.is_some() {
            return Err("--dump takes no --volume or --upto".into());
        }
        return match <[PathBuf; 1]>::try_from(positional) {
            Ok([journal]) => Ok(Cmd::Dump { journal, json }),
            Err(_) => Err("--dump takes one JOURNAL".into()),
        };
    }
    match <[PathBuf; 2]>::try_from(positional) {
        Ok([journal, image]) => Ok(Cmd::Replay { journal, image, opts, json }),
        Err(_) => Err("expected JOURNAL and IMAGE".into()),
    }
}

fn main() -> ExitCode {
    let cmd = match parse(std::env::args().skip(1).collect()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("journal-replay: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match cmd {
        Cmd::Help => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Cmd::Dump { journal, json } => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            match dump(&journal, &mut out, json) {
                Ok(s) => {
                    drop(out);
                    if !json {
                        let damaged =
                            if s.damaged > 0 { format!(", {} damaged spot(s)", s.damaged) } else { String::new() };
                        println!("# {} valid record(s){damaged}", s.records);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    drop(out);
                    eprintln!("journal-replay: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Replay { journal, image, opts, json } => match replay(&journal, &image, &opts) {
            Ok(s) => {
                if json {
                    println!("{}", s.to_json());
                } else {
                    print!("{}", s.to_text());
                }
                if let Some(v) = &opts.volume {
                    if !s.volumes.contains_key(v) {
                        let have: Vec<&str> = s.volumes.keys().map(String::as_str).collect();
                        eprintln!("journal-replay: note: no records of volume `{v}` (the journal has: {have:?})");
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("journal-replay: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
