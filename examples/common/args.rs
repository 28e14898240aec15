//! Command-line flags for the examples: every argument is one the example names, or the
//! example stops with its usage (an unknown flag used to be ignored silently).

use std::collections::HashMap;

/// The parsed command line of an example.
pub struct Args {
    switches: Vec<String>,
    values: HashMap<String, String>,
    /// Arguments that are not flags, in order.
    pub positional: Vec<String>,
}

impl Args {
    /// Parses `std::env::args()`: `switches` take no value, `valued` take the next argument;
    /// positional arguments are allowed only when `positional` says so. `--help` prints
    /// `usage` and exits 0; anything else unknown prints it and exits 2.
    pub fn parse(usage: &str, switches: &[&str], valued: &[&str], positional: bool) -> Args {
        let fail = |msg: String| -> ! {
            eprintln!("{msg}\n\nusage: {usage}");
            std::process::exit(2)
        };
        let mut args = Args { switches: Vec::new(), values: HashMap::new(), positional: Vec::new() };
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            if a == "--help" || a == "-h" {
                println!("usage: {usage}");
                std::process::exit(0);
            } else if switches.contains(&a.as_str()) {
                args.switches.push(a);
            } else if valued.contains(&a.as_str()) {
                let v = it.next().unwrap_or_else(|| fail(format!("{a} needs a value")));
                args.values.insert(a, v);
            } else if a.starts_with('-') || !positional {
                fail(format!("unknown argument {a:?}"));
            } else {
                args.positional.push(a);
            }
        }
        args
    }

    /// Whether the switch was given.
    pub fn has(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }

    /// The value of a valued flag, if given.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The value parsed as `T`, `default` when absent; exits with a message when it does
    /// not parse.
    pub fn parsed<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.value(name) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("{name} {v:?}: not a valid value");
                std::process::exit(2)
            }),
        }
    }
}
