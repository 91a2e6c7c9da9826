//! The dynamic values templates see, and Go's `fmt` rules for printing
//! them (`%v`, `printf`'s verbs, `time.Time` and `time.Duration`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::rc::Rc;

use crate::alert::LabelSet;

/// A template value. Go's types are mirrored as far as templates can tell
/// them apart: what they print as, which fields and methods they have.
#[derive(Clone, Debug, Default)]
pub enum Value {
    /// No value (a missing map entry, a nil interface).
    #[default]
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    /// `[]interface{}` / `[]string`.
    List(Rc<Vec<Value>>),
    /// `map[string]interface{}` (`dict`, `args`).
    Map(Rc<BTreeMap<String, Value>>),
    /// `map[string]string`: Prometheus's labels, Alertmanager's `KV` (with
    /// its methods `SortedPairs`, `Names`, `Values`, `Remove`).
    Labels(Rc<LabelSet>),
    /// Alertmanager's `Pairs` (`[]Pair{Name, Value}`, with `Names` and
    /// `Values`).
    Pairs(Rc<Vec<(String, String)>>),
    /// Alertmanager's `Alerts` (with `Firing` and `Resolved`).
    Alerts(Rc<Vec<Value>>),
    /// A Go struct (or pointer to one): its type's name and its fields.
    Struct(Rc<Struct>),
    /// `time.Time`, UTC.
    Time(Time),
    /// `time.Duration`, nanoseconds.
    Duration(i64),
}

#[derive(Debug)]
pub struct Struct {
    /// Go's name for the type, e.g. `*template.sample`.
    pub type_name: &'static str,
    pub fields: Vec<(&'static str, Value)>,
    /// Printed as `&{…}`.
    pub pointer: bool,
}

impl Struct {
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

/// A point in time: seconds and nanoseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

/// Go's zero `time.Time` (`0001-01-01 00:00:00 +0000 UTC`).
pub const ZERO_TIME: Time = Time {
    secs: -62_135_596_800,
    nanos: 0,
};

impl Time {
    pub fn from_millis(ms: i64) -> Time {
        Time {
            secs: ms.div_euclid(1000),
            nanos: (ms.rem_euclid(1000) * 1_000_000) as u32,
        }
    }
    pub fn from_nanos(ns: i128) -> Time {
        Time {
            secs: ns.div_euclid(1_000_000_000) as i64,
            nanos: ns.rem_euclid(1_000_000_000) as u32,
        }
    }
    pub fn as_nanos(self) -> i128 {
        i128::from(self.secs) * 1_000_000_000 + i128::from(self.nanos)
    }
}

impl Value {
    pub fn str(s: impl Into<Rc<str>>) -> Value {
        Value::Str(s.into())
    }
    pub fn list(v: Vec<Value>) -> Value {
        Value::List(Rc::new(v))
    }
    pub fn labels(l: &LabelSet) -> Value {
        Value::Labels(Rc::new(l.clone()))
    }

    /// Go's type name, for error messages.
    pub fn type_name(&self) -> String {
        match self {
            Value::Nil => "<nil>".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) => "int".into(),
            Value::Float(_) => "float64".into(),
            Value::Str(_) => "string".into(),
            Value::List(_) => "[]interface {}".into(),
            Value::Map(_) => "map[string]interface {}".into(),
            Value::Labels(_) => "map[string]string".into(),
            Value::Pairs(_) => "template.Pairs".into(),
            Value::Alerts(_) => "template.Alerts".into(),
            Value::Struct(s) => s.type_name.into(),
            Value::Time(_) => "time.Time".into(),
            Value::Duration(_) => "time.Duration".into(),
        }
    }

    /// Go's truth: false, 0, empty, nil are false.
    pub fn truth(&self) -> bool {
        match self {
            Value::Nil => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Float(f) => *f != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::List(l) | Value::Alerts(l) => !l.is_empty(),
            Value::Map(m) => !m.is_empty(),
            Value::Labels(m) => !m.is_empty(),
            Value::Pairs(p) => !p.is_empty(),
            Value::Struct(_) | Value::Time(_) => true,
            Value::Duration(d) => *d != 0,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// `fmt.Sprint`-style default formatting (`%v`).
pub fn fmt_v(v: &Value, out: &mut String) {
    match v {
        Value::Nil => out.push_str("<nil>"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => out.push_str(&fmt_float(*f, 'g', None)),
        Value::Str(s) => out.push_str(s),
        Value::List(l) | Value::Alerts(l) => {
            out.push('[');
            for (i, x) in l.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                fmt_v(x, out);
            }
            out.push(']');
        }
        Value::Map(m) => {
            out.push_str("map[");
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(k);
                out.push(':');
                fmt_v(x, out);
            }
            out.push(']');
        }
        Value::Labels(m) => {
            out.push_str("map[");
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                let _ = write!(out, "{k}:{x}");
            }
            out.push(']');
        }
        Value::Pairs(p) => {
            out.push('[');
            for (i, (k, x)) in p.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                let _ = write!(out, "{{{k} {x}}}");
            }
            out.push(']');
        }
        Value::Struct(s) => {
            if s.pointer {
                out.push('&');
            }
            out.push('{');
            for (i, (_, x)) in s.fields.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                fmt_v(x, out);
            }
            out.push('}');
        }
        Value::Time(t) => out.push_str(&format_time(*t, "2006-01-02 15:04:05.999999999 -0700 MST")),
        Value::Duration(d) => out.push_str(&fmt_duration(*d)),
    }
}

pub fn to_v(v: &Value) -> String {
    let mut s = String::new();
    fmt_v(v, &mut s);
    s
}

/// `fmt.Sprint(args...)`: spaces between operands when neither is a string.
pub fn sprint(args: &[Value]) -> String {
    let mut out = String::new();
    let mut prev_string = false;
    for (i, a) in args.iter().enumerate() {
        let is_string = matches!(a, Value::Str(_));
        if i > 0 && !is_string && !prev_string {
            out.push(' ');
        }
        fmt_v(a, &mut out);
        prev_string = is_string;
    }
    out
}

/// `fmt.Sprintln(args...)`: always spaces, and a newline.
pub fn sprintln(args: &[Value]) -> String {
    let mut out = String::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        fmt_v(a, &mut out);
    }
    out.push('\n');
    out
}

// ---------------------------------------------------------------------------
// Floats as Go's strconv formats them.

/// Decimal digits of `f` (> 0, finite) and the position of the decimal
/// point: `f = 0.d1d2… × 10^dp`. `prec` significant digits, or the shortest
/// that round-trip; trailing zeros removed.
fn decimal_digits(f: f64, prec: Option<usize>) -> (String, i32) {
    let s = match prec {
        Some(p) => format!("{:.*e}", p.saturating_sub(1), f),
        None => format!("{f:e}"),
    };
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let mut digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    while digits.len() > 1 && digits.ends_with('0') {
        digits.pop();
    }
    (digits, exp + 1)
}

fn fmt_exp(digits: &str, dp: i32, frac_digits: usize, upper: bool) -> String {
    let mut s = String::new();
    s.push_str(&digits[..1]);
    let rest: String = digits[1..]
        .chars()
        .chain(std::iter::repeat('0'))
        .take(frac_digits)
        .collect();
    if frac_digits > 0 {
        s.push('.');
        s.push_str(&rest);
    }
    let e = if digits == "0" { 0 } else { dp - 1 };
    let _ = write!(
        s,
        "{}{}{:02}",
        if upper { 'E' } else { 'e' },
        if e < 0 { '-' } else { '+' },
        e.abs()
    );
    s
}

fn fmt_fixed(digits: &str, dp: i32, frac_digits: usize) -> String {
    let mut s = String::new();
    if dp <= 0 {
        s.push('0');
    } else {
        for i in 0..dp as usize {
            s.push(digits.as_bytes().get(i).map_or('0', |b| *b as char));
        }
    }
    if frac_digits > 0 {
        s.push('.');
        for i in 0..frac_digits as i64 {
            let idx = dp as i64 + i;
            s.push(if idx < 0 {
                '0'
            } else {
                digits
                    .as_bytes()
                    .get(idx as usize)
                    .map_or('0', |b| *b as char)
            });
        }
    }
    s
}

/// Go's `strconv.FormatFloat(f, verb, prec, 64)` for verbs e E f g G
/// (`prec` None = shortest), with `fmt`'s `+Inf` for infinity.
pub fn fmt_float(f: f64, verb: char, prec: Option<usize>) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    let neg = f.is_sign_negative();
    let a = f.abs();
    let body = match verb {
        'f' | 'F' => match prec {
            Some(p) => format!("{a:.p$}"),
            None => {
                let (d, dp) = if a == 0.0 {
                    ("0".to_string(), 1)
                } else {
                    decimal_digits(a, None)
                };
                let frac = (d.len() as i32 - dp).max(0) as usize;
                fmt_fixed(&d, dp, frac)
            }
        },
        'e' | 'E' => {
            let p = prec.unwrap_or(usize::MAX);
            let (d, dp) = if a == 0.0 {
                ("0".to_string(), 1)
            } else if p == usize::MAX {
                decimal_digits(a, None)
            } else {
                decimal_digits(a, Some(p + 1))
            };
            let frac = if p == usize::MAX { d.len() - 1 } else { p };
            fmt_exp(&d, dp, frac, verb == 'E')
        }
        _ => {
            // 'g' / 'G'
            let shortest = prec.is_none();
            let mut p = prec.unwrap_or(0);
            if p == 0 && !shortest {
                p = 1;
            }
            let (d, dp) = if a == 0.0 {
                ("0".to_string(), 1)
            } else if shortest {
                decimal_digits(a, None)
            } else {
                decimal_digits(a, Some(p))
            };
            let nd = d.len() as i32;
            let mut eprec = if shortest { nd } else { p as i32 };
            if !shortest && eprec > nd && nd >= dp {
                eprec = nd;
            }
            if shortest {
                eprec = 6;
            }
            let exp = dp - 1;
            if a != 0.0 && (exp < -4 || exp >= eprec) {
                let mut pp = if shortest { nd } else { p as i32 };
                if pp > nd {
                    pp = nd;
                }
                fmt_exp(&d, dp, (pp - 1).max(0) as usize, verb == 'G')
            } else {
                let mut pp = if shortest { nd } else { p as i32 };
                if pp > dp {
                    pp = nd;
                }
                fmt_fixed(&d, dp, (pp - dp).max(0) as usize)
            }
        }
    };
    if neg { format!("-{body}") } else { body }
}

// ---------------------------------------------------------------------------
// printf.

/// Go's `fmt.Sprintf`.
pub fn sprintf(format: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut argi = 0;
    let mut chars = format.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut minus = false;
        let mut plus = false;
        let mut sharp = false;
        let mut zero = false;
        let mut space = false;
        while let Some(&(_, f)) = chars.peek() {
            match f {
                '-' => minus = true,
                '+' => plus = true,
                '#' => sharp = true,
                '0' => zero = true,
                ' ' => space = true,
                _ => break,
            }
            chars.next();
        }
        let mut width: Option<usize> = None;
        if let Some(&(_, '*')) = chars.peek() {
            chars.next();
            match args.get(argi) {
                Some(Value::Int(w)) => {
                    argi += 1;
                    if *w < 0 {
                        minus = true;
                    }
                    width = Some((w.unsigned_abs() as usize).min(1 << 20));
                }
                _ => {
                    argi += 1;
                    out.push_str("%!(BADWIDTH)");
                }
            }
        } else {
            let mut w = String::new();
            while let Some(&(_, d)) = chars.peek() {
                if !d.is_ascii_digit() {
                    break;
                }
                w.push(d);
                chars.next();
            }
            if !w.is_empty() {
                width = w.parse::<usize>().ok().map(|w| w.min(1 << 20));
            }
        }
        let mut prec: Option<usize> = None;
        if let Some(&(_, '.')) = chars.peek() {
            chars.next();
            if let Some(&(_, '*')) = chars.peek() {
                chars.next();
                match args.get(argi) {
                    Some(Value::Int(p)) if *p >= 0 => {
                        prec = Some((*p as usize).min(1 << 20));
                    }
                    _ => out.push_str("%!(BADPREC)"),
                }
                argi += 1;
            } else {
                let mut p = String::new();
                while let Some(&(_, d)) = chars.peek() {
                    if !d.is_ascii_digit() {
                        break;
                    }
                    p.push(d);
                    chars.next();
                }
                prec = Some(p.parse::<usize>().unwrap_or(0).min(1 << 20));
            }
        }
        let Some((_, verb)) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(argi) else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        argi += 1;
        let spec = Spec {
            minus,
            plus,
            sharp,
            zero,
            space,
            width,
            prec,
        };
        format_one(&mut out, verb, arg, &spec);
    }
    if argi < args.len() {
        out.push_str("%!(EXTRA ");
        for (i, a) in args[argi..].iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{}={}", a.type_name(), to_v(a));
        }
        out.push(')');
    }
    out
}

struct Spec {
    minus: bool,
    plus: bool,
    sharp: bool,
    zero: bool,
    space: bool,
    width: Option<usize>,
    prec: Option<usize>,
}

fn pad(out: &mut String, s: &str, spec: &Spec, numeric: bool) {
    let n = s.chars().count();
    let w = spec.width.unwrap_or(0);
    if n >= w {
        out.push_str(s);
        return;
    }
    let fill = w - n;
    if spec.minus {
        out.push_str(s);
        out.extend(std::iter::repeat_n(' ', fill));
    } else if spec.zero && numeric {
        // Zeros go after the sign.
        let (sign, rest) = match s.as_bytes().first() {
            Some(b'+' | b'-' | b' ') => s.split_at(1),
            _ => ("", s),
        };
        out.push_str(sign);
        out.extend(std::iter::repeat_n('0', fill));
        out.push_str(rest);
    } else {
        out.extend(std::iter::repeat_n(' ', fill));
        out.push_str(s);
    }
}

fn bad_verb(out: &mut String, verb: char, arg: &Value) {
    match arg {
        Value::Nil => {
            let _ = write!(out, "%!{verb}(<nil>)");
        }
        _ => {
            let _ = write!(out, "%!{verb}({}={})", arg.type_name(), to_v(arg));
        }
    }
}

fn sign_prefix(s: String, spec: &Spec) -> String {
    if s.starts_with('-') || s.starts_with('+') {
        return s;
    }
    if spec.plus {
        format!("+{s}")
    } else if spec.space {
        format!(" {s}")
    } else {
        s
    }
}

fn format_one(out: &mut String, verb: char, arg: &Value, spec: &Spec) {
    match (verb, arg) {
        ('v', Value::Float(f)) => {
            let s = sign_prefix(fmt_float(*f, 'g', spec.prec), spec);
            pad(out, &s, spec, f.is_finite());
        }
        ('v', Value::Int(i)) => pad(out, &sign_prefix(i.to_string(), spec), spec, true),
        ('v', _) | ('s', Value::Str(_)) => {
            let mut s = to_v(arg);
            if let (Some(p), Value::Str(_)) = (spec.prec, arg) {
                s = s.chars().take(p).collect();
            }
            pad(out, &s, spec, false);
        }
        ('s', Value::Int(_) | Value::Float(_) | Value::Bool(_) | Value::Nil) => {
            bad_verb(out, verb, arg)
        }
        ('s', _) => pad(out, &to_v(arg), spec, false),
        ('d', Value::Int(i)) => {
            let mut s = i.unsigned_abs().to_string();
            if let Some(p) = spec.prec {
                while s.len() < p {
                    s.insert(0, '0');
                }
            }
            let s = if *i < 0 {
                format!("-{s}")
            } else {
                sign_prefix(s, spec)
            };
            pad(out, &s, spec, spec.prec.is_none());
        }
        ('t', Value::Bool(b)) => pad(out, if *b { "true" } else { "false" }, spec, false),
        ('e' | 'E' | 'f' | 'F' | 'g' | 'G', Value::Float(f)) => {
            let prec = match verb {
                'e' | 'E' | 'f' | 'F' => Some(spec.prec.unwrap_or(6)),
                _ => spec.prec,
            };
            let s = sign_prefix(fmt_float(*f, verb, prec), spec);
            pad(out, &s, spec, f.is_finite());
        }
        ('q', Value::Str(s)) => {
            let q = if spec.sharp && !s.contains('`') {
                format!("`{s}`")
            } else {
                go_quote(s)
            };
            pad(out, &q, spec, false);
        }
        ('q', Value::Int(i)) => {
            let c = u32::try_from(*i)
                .ok()
                .and_then(char::from_u32)
                .unwrap_or('\u{FFFD}');
            pad(out, &format!("{c:?}"), spec, false);
        }
        ('c', Value::Int(i)) => {
            let c = u32::try_from(*i)
                .ok()
                .and_then(char::from_u32)
                .unwrap_or('\u{FFFD}');
            pad(out, &c.to_string(), spec, false);
        }
        ('x' | 'X', Value::Str(s)) => {
            let mut h = String::new();
            for b in s.bytes() {
                if verb == 'x' {
                    let _ = write!(h, "{b:02x}");
                } else {
                    let _ = write!(h, "{b:02X}");
                }
            }
            pad(out, &h, spec, false);
        }
        ('x' | 'X' | 'o' | 'b', Value::Int(i)) => {
            let a = i.unsigned_abs();
            let mut s = match verb {
                'x' => format!("{a:x}"),
                'X' => format!("{a:X}"),
                'o' => format!("{a:o}"),
                _ => format!("{a:b}"),
            };
            if spec.sharp {
                s = match verb {
                    'x' => format!("0x{s}"),
                    'X' => format!("0X{s}"),
                    'o' => format!("0{s}"),
                    _ => s,
                };
            }
            let s = if *i < 0 {
                format!("-{s}")
            } else {
                sign_prefix(s, spec)
            };
            pad(out, &s, spec, true);
        }
        (
            'd' | 'x' | 'X' | 'o' | 'b' | 'e' | 'E' | 'f' | 'F' | 'g' | 'G' | 'q' | 'c' | 't',
            Value::List(l),
        ) => {
            out.push('[');
            for (i, x) in l.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                format_one(out, verb, x, spec);
            }
            out.push(']');
        }
        _ => bad_verb(out, verb, arg),
    }
}

/// Go's `strconv.Quote`.
pub fn go_quote(s: &str) -> String {
    let mut q = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            '\r' => q.push_str("\\r"),
            '\x07' => q.push_str("\\a"),
            '\x08' => q.push_str("\\b"),
            '\x0c' => q.push_str("\\f"),
            '\x0b' => q.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(q, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                if (c as u32) < 0x10000 {
                    let _ = write!(q, "\\u{:04x}", c as u32);
                } else {
                    let _ = write!(q, "\\U{:08x}", c as u32);
                }
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

// ---------------------------------------------------------------------------
// time.Duration and time.Time.

/// Go's `time.Duration.String()`: `1h2m3.5s`, `1.5ms`, `0s`.
pub fn fmt_duration(d: i64) -> String {
    if d == 0 {
        return "0s".into();
    }
    let neg = d < 0;
    let u = d.unsigned_abs();
    let frac = |v: u64, digits: u32| -> String {
        // v / 10^digits with trailing zeros trimmed.
        let p = 10u64.pow(digits);
        let (w, f) = (v / p, v % p);
        if f == 0 {
            w.to_string()
        } else {
            let fs = format!("{f:0width$}", width = digits as usize);
            format!("{w}.{}", fs.trim_end_matches('0'))
        }
    };
    let s = if u < 1_000 {
        format!("{u}ns")
    } else if u < 1_000_000 {
        format!("{}µs", frac(u, 3))
    } else if u < 1_000_000_000 {
        format!("{}ms", frac(u, 6))
    } else {
        let secs = u / 1_000_000_000;
        let ns = u % 1_000_000_000;
        let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
        let sec = frac(s * 1_000_000_000 + ns, 9);
        if h > 0 {
            format!("{h}h{m}m{sec}s")
        } else if m > 0 {
            format!("{m}m{sec}s")
        } else {
            format!("{sec}s")
        }
    };
    if neg { format!("-{s}") } else { s }
}

/// Days since 1970-01-01 → (year, month 1-12, day 1-31).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) → days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// Go's `time.Time.Format(layout)` in UTC.
pub fn format_time(t: Time, layout: &str) -> String {
    let days = t.secs.div_euclid(86_400);
    let sod = t.secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, min, sec) = (sod / 3600, (sod / 60) % 60, sod % 60);
    let weekday = (days + 4).rem_euclid(7) as usize;
    let yday = days - days_from_civil(year, 1, 1) + 1;
    let mut out = String::new();
    let b = layout.as_bytes();
    let mut i = 0;
    while i < layout.len() {
        let rest = &layout[i..];
        let take = |p: &str| rest.starts_with(p);
        let mut adv = 0;
        if take("January") {
            out.push_str(MONTHS[month as usize - 1]);
            adv = 7;
        } else if take("Jan") {
            out.push_str(&MONTHS[month as usize - 1][..3]);
            adv = 3;
        } else if take("Monday") {
            out.push_str(DAYS[weekday]);
            adv = 6;
        } else if take("Mon") {
            out.push_str(&DAYS[weekday][..3]);
            adv = 3;
        } else if take("MST") {
            out.push_str("UTC");
            adv = 3;
        } else if take("2006") {
            let _ = write!(out, "{year:04}");
            adv = 4;
        } else if take("002") {
            let _ = write!(out, "{yday:03}");
            adv = 3;
        } else if take("01") {
            let _ = write!(out, "{month:02}");
            adv = 2;
        } else if take("02") {
            let _ = write!(out, "{day:02}");
            adv = 2;
        } else if take("03") {
            let _ = write!(out, "{:02}", if hour % 12 == 0 { 12 } else { hour % 12 });
            adv = 2;
        } else if take("04") {
            let _ = write!(out, "{min:02}");
            adv = 2;
        } else if take("05") {
            let _ = write!(out, "{sec:02}");
            adv = 2;
        } else if take("06") {
            let _ = write!(out, "{:02}", year.rem_euclid(100));
            adv = 2;
        } else if take("15") {
            let _ = write!(out, "{hour:02}");
            adv = 2;
        } else if take("__2") {
            let _ = write!(out, "{yday:>3}");
            adv = 3;
        } else if take("_2") {
            let _ = write!(out, "{day:>2}");
            adv = 2;
        } else if take("1") {
            let _ = write!(out, "{month}");
            adv = 1;
        } else if take("2") {
            let _ = write!(out, "{day}");
            adv = 1;
        } else if take("3") {
            let _ = write!(out, "{}", if hour % 12 == 0 { 12 } else { hour % 12 });
            adv = 1;
        } else if take("4") {
            let _ = write!(out, "{min}");
            adv = 1;
        } else if take("5") {
            let _ = write!(out, "{sec}");
            adv = 1;
        } else if take("PM") {
            out.push_str(if hour >= 12 { "PM" } else { "AM" });
            adv = 2;
        } else if take("pm") {
            out.push_str(if hour >= 12 { "pm" } else { "am" });
            adv = 2;
        } else if take("-07:00:00") {
            out.push_str("+00:00:00");
            adv = 9;
        } else if take("-070000") {
            out.push_str("+000000");
            adv = 7;
        } else if take("-07:00") {
            out.push_str("+00:00");
            adv = 6;
        } else if take("-0700") {
            out.push_str("+0000");
            adv = 5;
        } else if take("-07") {
            out.push_str("+00");
            adv = 3;
        } else if take("Z07:00:00") {
            out.push('Z');
            adv = 9;
        } else if take("Z070000") {
            out.push('Z');
            adv = 7;
        } else if take("Z07:00") {
            out.push('Z');
            adv = 6;
        } else if take("Z0700") {
            out.push('Z');
            adv = 5;
        } else if take("Z07") {
            out.push('Z');
            adv = 3;
        } else if (b[i] == b'.' || b[i] == b',')
            && i + 1 < b.len()
            && (b[i + 1] == b'0' || b[i + 1] == b'9')
        {
            let c = b[i + 1];
            let mut j = i + 1;
            while j < b.len() && b[j] == c {
                j += 1;
            }
            if j < b.len() && b[j].is_ascii_digit() {
                out.push(b[i] as char);
                adv = 1;
            } else {
                let n = (j - i - 1).min(9);
                let digits = format!("{:09}", t.nanos);
                let digits = &digits[..n];
                if c == b'0' {
                    out.push(b[i] as char);
                    out.push_str(digits);
                } else {
                    let trimmed = digits.trim_end_matches('0');
                    if !trimmed.is_empty() {
                        out.push(b[i] as char);
                        out.push_str(trimmed);
                    }
                }
                adv = j - i;
            }
        }
        if adv == 0 {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            adv = c.len_utf8();
        }
        i += adv;
    }
    out
}

/// RFC 3339 with nanoseconds, as Go's JSON encoding of `time.Time`.
pub fn rfc3339nano(t: Time) -> String {
    format_time(t, "2006-01-02T15:04:05.999999999Z07:00")
}

/// Parse a time in Go layout `layout` (UTC), for the common numeric
/// layouts (`2006-01-02`, `2006-01-02T15:04:05Z07:00`, …).
pub fn parse_time(layout: &str, s: &str) -> Result<Time, String> {
    let bad = || format!("parsing time {s:?} as {layout:?}: cannot parse");
    let (mut y, mut mo, mut d, mut h, mut mi, mut se, mut ns) =
        (1i64, 1u32, 1u32, 0i64, 0i64, 0i64, 0u32);
    let mut li = 0;
    let mut si = 0;
    let lb = layout.as_bytes();
    let sb = s.as_bytes();
    let num = |si: &mut usize, n: usize| -> Option<i64> {
        let part = s.get(*si..*si + n)?;
        if !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *si += n;
        part.parse().ok()
    };
    while li < lb.len() {
        let rest = &layout[li..];
        if rest.starts_with("2006") {
            y = num(&mut si, 4).ok_or_else(bad)?;
            li += 4;
        } else if rest.starts_with("01") {
            mo = num(&mut si, 2).ok_or_else(bad)? as u32;
            li += 2;
        } else if rest.starts_with("02") {
            d = num(&mut si, 2).ok_or_else(bad)? as u32;
            li += 2;
        } else if rest.starts_with("15") {
            h = num(&mut si, 2).ok_or_else(bad)?;
            li += 2;
        } else if rest.starts_with("04") {
            mi = num(&mut si, 2).ok_or_else(bad)?;
            li += 2;
        } else if rest.starts_with("05") {
            se = num(&mut si, 2).ok_or_else(bad)?;
            li += 2;
            // Fractional seconds in the input even if the layout has none.
            if si < sb.len() && sb[si] == b'.' && !(li < lb.len() && lb[li] == b'.') {
                si += 1;
                let start = si;
                while si < sb.len() && sb[si].is_ascii_digit() {
                    si += 1;
                }
                let f = format!("{:0<9}", &s[start..si]);
                ns = f[..9].parse().map_err(|_| bad())?;
            }
        } else if rest.starts_with("Z07:00") {
            if si < sb.len() && sb[si] == b'Z' {
                si += 1;
            } else if s[si..].starts_with("+00:00") {
                si += 6;
            } else {
                return Err(bad());
            }
            li += 6;
        } else if rest.starts_with(".000") || rest.starts_with(".999") {
            let c = lb[li + 1];
            let mut j = li + 1;
            while j < lb.len() && lb[j] == c {
                j += 1;
            }
            li = j;
            if si < sb.len() && sb[si] == b'.' {
                si += 1;
                let start = si;
                while si < sb.len() && sb[si].is_ascii_digit() {
                    si += 1;
                }
                let f = format!("{:0<9}", &s[start..si]);
                ns = f.get(..9).and_then(|x| x.parse().ok()).ok_or_else(bad)?;
            } else if c == b'0' {
                return Err(bad());
            }
        } else {
            if si >= sb.len() || sb[si] != lb[li] {
                return Err(bad());
            }
            si += 1;
            li += 1;
        }
    }
    if si != sb.len() {
        return Err(format!("parsing time {s:?}: extra text: {:?}", &s[si..]));
    }
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 59 {
        return Err(format!("parsing time {s:?}: value out of range"));
    }
    let days = days_from_civil(y, mo, d);
    Ok(Time {
        secs: days * 86_400 + h * 3600 + mi * 60 + se,
        nanos: ns,
    })
}
