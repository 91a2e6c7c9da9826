//! Executing a parsed template against a [`Value`], as Go's
//! `text/template` does, with Go's execution error messages.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use super::funcs::{self, CallError, Env};
use super::parse::{Arg, Command, Node, Pipe, line_col};
use super::value::{Struct, Time, Value, fmt_v, sprint, sprintf, sprintln};

/// Output cap: a template producing more fails.
pub const MAX_OUTPUT: usize = 1 << 20;
/// How deeply `{{template}}` calls may nest.
pub const MAX_DEPTH: usize = 100;
/// Evaluation steps (actions, commands, iterations) before giving up.
pub const MAX_STEPS: u64 = 5_000_000;

#[derive(Clone, Copy)]
enum At<'t> {
    Arg(&'t Arg),
    Cmd(&'t Command),
    Node(&'t Node),
}

impl At<'_> {
    fn pos(&self) -> usize {
        match self {
            At::Arg(a) => a.pos(),
            At::Cmd(c) => c.pos,
            At::Node(n) => match n {
                Node::Action { pos, .. }
                | Node::Template { pos, .. }
                | Node::Break(pos)
                | Node::Continue(pos) => *pos,
                Node::If(b) | Node::Range(b) | Node::With(b) => b.pos,
                Node::Text(_) => 0,
            },
        }
    }
    fn context(&self) -> String {
        let s = match self {
            At::Arg(a) => a.to_string(),
            At::Cmd(c) => c.to_string(),
            At::Node(n) => n.to_string(),
        };
        if s.len() > 20 {
            let mut cut = 20;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{}...", &s[..cut])
        } else {
            s
        }
    }
}

pub(crate) enum Flow {
    Break,
    Continue,
    Err(String),
}

type R<T> = Result<T, Flow>;

pub(crate) struct State<'t, 'e> {
    pub src: &'t str,
    pub parse_name: &'t str,
    pub trees: &'t HashMap<String, Vec<Node>>,
    pub env: &'e Env<'e>,
    pub out: String,
    vars: Vec<(String, Value)>,
    exec_name: String,
    at: Option<At<'t>>,
    depth: usize,
    steps: u64,
}

impl<'t, 'e> State<'t, 'e> {
    pub fn new(
        src: &'t str,
        parse_name: &'t str,
        trees: &'t HashMap<String, Vec<Node>>,
        env: &'e Env<'e>,
    ) -> Self {
        State {
            src,
            parse_name,
            trees,
            env,
            out: String::new(),
            vars: Vec::new(),
            exec_name: parse_name.to_string(),
            at: None,
            depth: 0,
            steps: 0,
        }
    }

    pub fn run(&mut self, name: &str, dot: Value) -> Result<(), String> {
        let Some(list) = self.trees.get(name) else {
            return Err(format!(
                "template: no template {name:?} associated with template {:?}",
                self.parse_name
            ));
        };
        self.exec_name = name.to_string();
        self.vars = vec![("$".into(), dot.clone())];
        match self.walk_list(&dot, list) {
            Ok(()) => Ok(()),
            Err(Flow::Err(e)) => Err(e),
            Err(_) => Err(self.error_msg("break or continue outside range")),
        }
    }

    fn error_msg(&self, msg: &str) -> String {
        match self.at {
            Some(at) => {
                let (line, col) = line_col(self.src, at.pos());
                format!(
                    "template: {}:{line}:{col}: executing {:?} at <{}>: {msg}",
                    self.parse_name,
                    self.exec_name,
                    at.context()
                )
            }
            None => format!(
                "template: {}: executing {:?}: {msg}",
                self.parse_name, self.exec_name
            ),
        }
    }

    fn errorf<T>(&self, msg: impl AsRef<str>) -> R<T> {
        Err(Flow::Err(self.error_msg(msg.as_ref())))
    }

    fn step(&mut self) -> R<()> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return self.errorf(format!("template execution exceeded {MAX_STEPS} steps"));
        }
        Ok(())
    }

    fn write(&mut self, s: &str) -> R<()> {
        self.out.push_str(s);
        if self.out.len() > MAX_OUTPUT {
            return self.errorf(format!("template output exceeds {MAX_OUTPUT} bytes"));
        }
        Ok(())
    }

    fn walk_list(&mut self, dot: &Value, list: &'t [Node]) -> R<()> {
        for n in list {
            self.walk(dot, n)?;
        }
        Ok(())
    }

    fn walk(&mut self, dot: &Value, node: &'t Node) -> R<()> {
        self.step()?;
        match node {
            Node::Text(t) => self.write(t),
            Node::Action { pipe, .. } => {
                self.at = Some(At::Node(node));
                let v = self.eval_pipeline(dot, pipe)?;
                if pipe.decl.is_empty() {
                    self.print_value(&v)?;
                }
                Ok(())
            }
            Node::If(b) | Node::With(b) => {
                let mark = self.vars.len();
                self.at = Some(At::Node(node));
                let v = self.eval_pipeline(dot, &b.pipe)?;
                let r = if v.truth() {
                    if matches!(node, Node::With(_)) {
                        self.walk_list(&v, &b.list)
                    } else {
                        self.walk_list(dot, &b.list)
                    }
                } else if let Some(e) = &b.else_list {
                    self.walk_list(dot, e)
                } else {
                    Ok(())
                };
                self.vars.truncate(mark);
                r
            }
            Node::Range(b) => {
                let mark = self.vars.len();
                let r = self.walk_range(dot, node, b);
                self.vars.truncate(mark);
                r
            }
            Node::Template { name, pipe, .. } => {
                self.at = Some(At::Node(node));
                let Some(list) = self.trees.get(name) else {
                    return self.errorf(format!("template {name:?} not defined"));
                };
                if self.depth >= MAX_DEPTH {
                    return self.errorf(format!("exceeded maximum template depth ({MAX_DEPTH})"));
                }
                let new_dot = match pipe {
                    Some(p) => self.eval_pipeline(dot, p)?,
                    None => Value::Nil,
                };
                let saved_vars =
                    std::mem::replace(&mut self.vars, vec![("$".into(), new_dot.clone())]);
                let saved_name = std::mem::replace(&mut self.exec_name, name.clone());
                self.depth += 1;
                let r = self.walk_list(&new_dot, list);
                self.depth -= 1;
                self.vars = saved_vars;
                self.exec_name = saved_name;
                match r {
                    Err(Flow::Break | Flow::Continue) => Ok(()),
                    r => r,
                }
            }
            Node::Break(_) => Err(Flow::Break),
            Node::Continue(_) => Err(Flow::Continue),
        }
    }

    fn walk_range(&mut self, dot: &Value, node: &'t Node, b: &'t super::parse::Branch) -> R<()> {
        self.at = Some(At::Node(node));
        let val = self.eval_pipeline(dot, &b.pipe)?;
        let items: Vec<(Value, Value)> = match &val {
            Value::List(l) | Value::Alerts(l) => l
                .iter()
                .enumerate()
                .map(|(i, v)| (Value::Int(i as i64), v.clone()))
                .collect(),
            Value::Pairs(p) => p
                .iter()
                .enumerate()
                .map(|(i, (k, v))| (Value::Int(i as i64), pair_value(k, v)))
                .collect(),
            Value::Map(m) => m
                .iter()
                .map(|(k, v)| (Value::str(k.as_str()), v.clone()))
                .collect(),
            Value::Labels(m) => m
                .iter()
                .map(|(k, v)| (Value::str(k.as_str()), Value::str(v.as_str())))
                .collect(),
            Value::Int(n) => {
                if b.pipe.decl.len() > 1 {
                    return self.errorf(format!(
                        "can't use {n} to iterate over more than one variable"
                    ));
                }
                if *n > MAX_STEPS as i64 {
                    return self.errorf(format!("template execution exceeded {MAX_STEPS} steps"));
                }
                (0..(*n).max(0))
                    .map(|i| (Value::Int(i), Value::Int(i)))
                    .collect()
            }
            Value::Nil => Vec::new(),
            other => {
                return self.errorf(format!(
                    "range can't iterate over {}",
                    super::value::to_v(other)
                ));
            }
        };
        if items.is_empty() {
            if let Some(e) = &b.else_list {
                return self.walk_list(dot, e);
            }
            return Ok(());
        }
        let ndecl = b.pipe.decl.len();
        for (index, elem) in items {
            self.step()?;
            if ndecl > 0 {
                if b.pipe.is_assign {
                    let v = if ndecl > 1 {
                        index.clone()
                    } else {
                        elem.clone()
                    };
                    self.set_var(&b.pipe.decl[0], v);
                } else {
                    self.set_top_var(1, elem.clone());
                }
            }
            if ndecl > 1 {
                if b.pipe.is_assign {
                    self.set_var(&b.pipe.decl[1], elem.clone());
                } else {
                    self.set_top_var(2, index);
                }
            }
            let mark = self.vars.len();
            let r = self.walk_list(&elem, &b.list);
            self.vars.truncate(mark);
            match r {
                Ok(()) | Err(Flow::Continue) => {}
                Err(Flow::Break) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn set_top_var(&mut self, n: usize, v: Value) {
        let len = self.vars.len();
        if n <= len {
            self.vars[len - n].1 = v;
        }
    }

    fn set_var(&mut self, name: &str, v: Value) {
        if let Some(slot) = self.vars.iter_mut().rev().find(|(n, _)| n == name) {
            slot.1 = v;
        }
    }

    fn var(&self, name: &str) -> R<Value> {
        match self.vars.iter().rev().find(|(n, _)| n == name) {
            Some((_, v)) => Ok(v.clone()),
            None => self.errorf(format!("undefined variable: {name}")),
        }
    }

    fn print_value(&mut self, v: &Value) -> R<()> {
        let mut s = String::new();
        match v {
            Value::Nil => s.push_str("<no value>"),
            Value::Struct(st) if st.pointer => {
                // Go prints what a pointer points to.
                let plain = Value::Struct(Rc::new(Struct {
                    type_name: st.type_name,
                    fields: st.fields.clone(),
                    pointer: false,
                }));
                fmt_v(&plain, &mut s);
            }
            v => fmt_v(v, &mut s),
        }
        self.write(&s)
    }

    fn eval_pipeline(&mut self, dot: &Value, pipe: &'t Pipe) -> R<Value> {
        let mut value: Option<Value> = None;
        for cmd in &pipe.cmds {
            let v = self.eval_command(dot, cmd, value.take())?;
            value = Some(v);
        }
        let value = value.unwrap_or_default();
        for name in &pipe.decl {
            if pipe.is_assign {
                self.set_var(name, value.clone());
            } else {
                self.vars.push((name.clone(), value.clone()));
            }
        }
        Ok(value)
    }

    fn not_a_function(&self, args: &[Arg], final_: &Option<Value>) -> R<()> {
        if args.len() > 1 || final_.is_some() {
            return self.errorf(format!("can't give argument to non-function {}", args[0]));
        }
        Ok(())
    }

    fn eval_command(&mut self, dot: &Value, cmd: &'t Command, final_: Option<Value>) -> R<Value> {
        self.step()?;
        let first = &cmd.args[0];
        match first {
            Arg::Field { idents, .. } => {
                self.at = Some(At::Arg(first));
                self.eval_field_chain(dot, dot.clone(), idents, &cmd.args, final_)
            }
            Arg::Chain { node, fields, .. } => {
                if matches!(**node, Arg::Nil(_)) {
                    return self.errorf(format!("indirection through explicit nil in {first}"));
                }
                let recv = self.eval_arg(dot, node)?;
                self.at = Some(At::Arg(first));
                self.eval_field_chain(dot, recv, fields, &cmd.args, final_)
            }
            Arg::Ident(_, name) => self.eval_function(dot, first, name, cmd, &cmd.args, final_),
            Arg::Pipe(p) => {
                self.not_a_function(&cmd.args, &final_)?;
                self.eval_pipeline(dot, p)
            }
            Arg::Variable { name, idents, .. } => {
                self.at = Some(At::Arg(first));
                let v = self.var(name)?;
                if idents.is_empty() {
                    self.not_a_function(&cmd.args, &final_)?;
                    return Ok(v);
                }
                self.eval_field_chain(dot, v, idents, &cmd.args, final_)
            }
            _ => {
                self.at = Some(At::Arg(first));
                self.not_a_function(&cmd.args, &final_)?;
                match first {
                    Arg::Nil(_) => self.errorf("nil is not a command"),
                    Arg::Dot(_) => Ok(dot.clone()),
                    _ => self.eval_arg(dot, first),
                }
            }
        }
    }

    fn eval_arg(&mut self, dot: &Value, arg: &'t Arg) -> R<Value> {
        self.at = Some(At::Arg(arg));
        match arg {
            Arg::Dot(_) => Ok(dot.clone()),
            Arg::Nil(_) => Ok(Value::Nil),
            Arg::Bool(_, b) => Ok(Value::Bool(*b)),
            Arg::Number(_, n) => {
                if n.is_float_syntax
                    && let Some(f) = n.float
                {
                    return Ok(Value::Float(f));
                }
                match (n.int, n.float) {
                    (Some(i), _) => Ok(Value::Int(i)),
                    (None, Some(f)) => Ok(Value::Float(f)),
                    _ => self.errorf(format!("{} overflows int", n.text)),
                }
            }
            Arg::Str { value, .. } => Ok(Value::str(value.as_str())),
            Arg::Field { idents, .. } => {
                self.eval_field_chain(dot, dot.clone(), idents, std::slice::from_ref(arg), None)
            }
            Arg::Variable { name, idents, .. } => {
                let v = self.var(name)?;
                if idents.is_empty() {
                    return Ok(v);
                }
                self.eval_field_chain(dot, v, idents, std::slice::from_ref(arg), None)
            }
            Arg::Pipe(p) => self.eval_pipeline(dot, p),
            Arg::Ident(_, name) => {
                let cmd_args = std::slice::from_ref(arg);
                self.eval_function_args(dot, arg, name, At::Arg(arg), cmd_args, None)
            }
            Arg::Chain { node, fields, .. } => {
                if matches!(**node, Arg::Nil(_)) {
                    return self.errorf(format!("indirection through explicit nil in {arg}"));
                }
                let recv = self.eval_arg(dot, node)?;
                self.at = Some(At::Arg(arg));
                self.eval_field_chain(dot, recv, fields, std::slice::from_ref(arg), None)
            }
        }
    }

    fn eval_field_chain(
        &mut self,
        dot: &Value,
        mut recv: Value,
        idents: &'t [String],
        args: &'t [Arg],
        final_: Option<Value>,
    ) -> R<Value> {
        let n = idents.len();
        for id in &idents[..n - 1] {
            recv = self.eval_field(dot, id, &[], None, recv)?;
        }
        self.eval_field(dot, &idents[n - 1], args, final_, recv)
    }

    fn eval_field(
        &mut self,
        dot: &Value,
        name: &str,
        args: &'t [Arg],
        final_: Option<Value>,
        recv: Value,
    ) -> R<Value> {
        let has_args = args.len() > 1 || final_.is_some();
        if matches!(recv, Value::Nil) {
            if has_args {
                return self.errorf("nil is not a command");
            }
            return Ok(Value::Nil);
        }
        if let Some(arity) = method_arity(&recv, name, self.env.kv_methods) {
            let mut vals = Vec::new();
            for a in args.iter().skip(1) {
                vals.push(self.eval_arg(dot, a)?);
            }
            if let Some(f) = final_ {
                vals.push(f);
            }
            if vals.len() != arity {
                return self.errorf(format!(
                    "wrong number of args for {name}: want {arity} got {}",
                    vals.len()
                ));
            }
            return match call_method(&recv, name, vals) {
                Ok(v) => Ok(v),
                Err(e) => self.errorf(format!("error calling {name}: {e}")),
            };
        }
        match &recv {
            Value::Struct(s) => match s.field(name) {
                Some(v) => {
                    if has_args {
                        return self.errorf(format!(
                            "{name} has arguments but cannot be invoked as function"
                        ));
                    }
                    Ok(v.clone())
                }
                None => self.errorf(format!(
                    "can't evaluate field {name} in type {}",
                    s.type_name
                )),
            },
            Value::Map(m) => {
                if has_args {
                    return self.errorf(format!("{name} is not a method but has arguments"));
                }
                Ok(m.get(name).cloned().unwrap_or(Value::Nil))
            }
            Value::Labels(m) => {
                if has_args {
                    return self.errorf(format!("{name} is not a method but has arguments"));
                }
                match m.get(name) {
                    Some(v) => Ok(Value::str(v.as_str())),
                    None if self.env.missingkey_zero => Ok(Value::str("")),
                    None => Ok(Value::Nil),
                }
            }
            other => self.errorf(format!(
                "can't evaluate field {name} in type {}",
                self.type_name(other)
            )),
        }
    }

    fn type_name(&self, v: &Value) -> String {
        match v {
            Value::Labels(_) if self.env.kv_methods => "template.KV".into(),
            v => v.type_name(),
        }
    }

    fn eval_function(
        &mut self,
        dot: &Value,
        ident: &'t Arg,
        name: &str,
        cmd: &'t Command,
        args: &'t [Arg],
        final_: Option<Value>,
    ) -> R<Value> {
        self.eval_function_args(dot, ident, name, At::Cmd(cmd), args, final_)
    }

    fn eval_function_args(
        &mut self,
        dot: &Value,
        ident: &'t Arg,
        name: &str,
        cmd_at: At<'t>,
        args: &'t [Arg],
        final_: Option<Value>,
    ) -> R<Value> {
        self.at = Some(At::Arg(ident));
        let given = args.len() - 1 + usize::from(final_.is_some());
        if let Some((min, max)) = funcs::arity(name, self.env.flavor) {
            match max {
                Some(max) if min == max && given != min => {
                    return self.errorf(format!(
                        "wrong number of args for {name}: want {min} got {given}"
                    ));
                }
                Some(max) if given < min || given > max => {
                    return self.errorf(format!(
                        "wrong number of args for {name}: want {min} got {given}"
                    ));
                }
                None if given < min => {
                    return self.errorf(format!(
                        "wrong number of args for {name}: want at least {min} got {given}"
                    ));
                }
                _ => {}
            }
        }
        // `and` and `or` evaluate their arguments only as far as needed.
        if name == "and" || name == "or" {
            let mut last = Value::Nil;
            let n = args.len() - 1;
            for (i, a) in args.iter().skip(1).enumerate() {
                let v = self.eval_arg(dot, a)?;
                let t = v.truth();
                last = v;
                let is_last = i + 1 == n && final_.is_none();
                if (name == "and" && !t) || (name == "or" && t) || is_last {
                    return Ok(last);
                }
            }
            if let Some(f) = final_ {
                return Ok(f);
            }
            return Ok(last);
        }
        let mut vals = Vec::with_capacity(given);
        for a in args.iter().skip(1) {
            vals.push(self.eval_arg(dot, a)?);
        }
        if let Some(f) = final_ {
            vals.push(f);
        }
        self.at = Some(cmd_at);
        let r = match builtin(name, &vals) {
            Some(r) => r,
            None => funcs::call(name, vals, self.env),
        };
        match r {
            Ok(v) => {
                if let Value::Str(s) = &v
                    && s.len() > MAX_OUTPUT
                {
                    return self.errorf(format!(
                        "error calling {name}: result exceeds {MAX_OUTPUT} bytes"
                    ));
                }
                Ok(v)
            }
            Err(CallError::Call(e)) => self.errorf(format!("error calling {name}: {e}")),
            Err(CallError::Plain(e)) => self.errorf(e),
        }
    }
}

pub(crate) fn pair_value(k: &str, v: &str) -> Value {
    Value::Struct(Rc::new(Struct {
        type_name: "template.Pair",
        fields: vec![("Name", Value::str(k)), ("Value", Value::str(v))],
        pointer: false,
    }))
}

/// Methods of the Go types templates see: their argument count.
fn method_arity(recv: &Value, name: &str, kv_methods: bool) -> Option<usize> {
    match (recv, name) {
        (Value::Labels(_), "SortedPairs" | "Names" | "Values") if kv_methods => Some(0),
        (Value::Labels(_), "Remove") if kv_methods => Some(1),
        (Value::Pairs(_), "Names" | "Values") => Some(0),
        (Value::Alerts(_), "Firing" | "Resolved") => Some(0),
        (
            Value::Time(_),
            "String" | "Unix" | "UnixMilli" | "UnixNano" | "UTC" | "Local" | "Year" | "Day"
            | "Hour" | "Minute" | "Second" | "Nanosecond" | "IsZero" | "YearDay" | "Month"
            | "Weekday",
        ) => Some(0),
        (Value::Time(_), "Format" | "Add" | "Sub" | "Before" | "After" | "Equal" | "In") => Some(1),
        (
            Value::Duration(_),
            "String" | "Seconds" | "Minutes" | "Hours" | "Milliseconds" | "Microseconds"
            | "Nanoseconds" | "Abs",
        ) => Some(0),
        (Value::Duration(_), "Round" | "Truncate") => Some(1),
        _ => None,
    }
}

fn want_str(v: &Value) -> Result<&str, String> {
    v.as_str().ok_or_else(|| {
        format!(
            "wrong type for value; expected string; got {}",
            v.type_name()
        )
    })
}

fn call_method(recv: &Value, name: &str, args: Vec<Value>) -> Result<Value, String> {
    Ok(match (recv, name) {
        (Value::Labels(m), "SortedPairs") => Value::Pairs(Rc::new(
            m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        )),
        (Value::Labels(m), "Names") => {
            Value::list(m.keys().map(|k| Value::str(k.as_str())).collect())
        }
        (Value::Labels(m), "Values") => {
            Value::list(m.values().map(|v| Value::str(v.as_str())).collect())
        }
        (Value::Labels(m), "Remove") => {
            let mut out = (**m).clone();
            match &args[0] {
                Value::List(l) => {
                    for k in l.iter() {
                        out.remove(want_str(k)?);
                    }
                }
                other => {
                    return Err(format!(
                        "wrong type for value; expected []string; got {}",
                        other.type_name()
                    ));
                }
            }
            Value::Labels(Rc::new(out))
        }
        (Value::Pairs(p), "Names") => {
            Value::list(p.iter().map(|(k, _)| Value::str(k.as_str())).collect())
        }
        (Value::Pairs(p), "Values") => {
            Value::list(p.iter().map(|(_, v)| Value::str(v.as_str())).collect())
        }
        (Value::Alerts(a), "Firing" | "Resolved") => {
            let want = if name == "Firing" {
                "firing"
            } else {
                "resolved"
            };
            Value::list(
                a.iter()
                    .filter(|x| matches!(x, Value::Struct(s) if s.field("Status").and_then(Value::as_str) == Some(want)))
                    .cloned()
                    .collect(),
            )
        }
        (Value::Time(t), _) => time_method(*t, name, &args)?,
        (Value::Duration(d), _) => {
            let d = *d;
            match name {
                "String" => Value::str(super::value::fmt_duration(d)),
                "Seconds" => Value::Float(d as f64 / 1e9),
                "Minutes" => Value::Float(d as f64 / 60e9),
                "Hours" => Value::Float(d as f64 / 3600e9),
                "Milliseconds" => Value::Int(d / 1_000_000),
                "Microseconds" => Value::Int(d / 1_000),
                "Nanoseconds" => Value::Int(d),
                "Abs" => Value::Duration(d.saturating_abs()),
                "Round" | "Truncate" => {
                    let Value::Duration(m) = args[0] else {
                        return Err(format!(
                            "wrong type for value; expected time.Duration; got {}",
                            args[0].type_name()
                        ));
                    };
                    if m <= 0 {
                        Value::Duration(d)
                    } else if name == "Truncate" {
                        Value::Duration(d - d % m)
                    } else {
                        let r = d % m;
                        let down = d - r;
                        if r.abs() * 2 >= m {
                            Value::Duration(down.saturating_add(if d < 0 { -m } else { m }))
                        } else {
                            Value::Duration(down)
                        }
                    }
                }
                _ => Value::Nil,
            }
        }
        _ => Value::Nil,
    })
}

fn time_method(t: Time, name: &str, args: &[Value]) -> Result<Value, String> {
    use super::value::format_time;
    let num = |layout: &str| format_time(t, layout).trim().parse::<i64>().unwrap_or(0);
    Ok(match name {
        "String" => Value::str(format_time(t, "2006-01-02 15:04:05.999999999 -0700 MST")),
        "Unix" => Value::Int(t.secs),
        "UnixMilli" => Value::Int((t.as_nanos() / 1_000_000) as i64),
        "UnixNano" => Value::Int(t.as_nanos().clamp(i64::MIN as i128, i64::MAX as i128) as i64),
        "UTC" | "Local" => Value::Time(t),
        "Year" => Value::Int(num("2006")),
        "Day" => Value::Int(num("2")),
        "Hour" => Value::Int(num("15")),
        "Minute" => Value::Int(num("4")),
        "Second" => Value::Int(num("5")),
        "Nanosecond" => Value::Int(i64::from(t.nanos)),
        "YearDay" => Value::Int(num("002")),
        "Month" => Value::str(format_time(t, "January")),
        "Weekday" => Value::str(format_time(t, "Monday")),
        "IsZero" => Value::Bool(t == super::value::ZERO_TIME),
        "Format" => Value::str(format_time(t, want_str(&args[0])?)),
        "In" => {
            funcs::check_zone(want_str(&args[0]).unwrap_or(""))?;
            Value::Time(t)
        }
        "Add" => match args[0] {
            Value::Duration(d) | Value::Int(d) => {
                Value::Time(Time::from_nanos(t.as_nanos() + i128::from(d)))
            }
            ref o => {
                return Err(format!(
                    "wrong type for value; expected time.Duration; got {}",
                    o.type_name()
                ));
            }
        },
        "Sub" | "Before" | "After" | "Equal" => {
            let Value::Time(u) = args[0] else {
                return Err(format!(
                    "wrong type for value; expected time.Time; got {}",
                    args[0].type_name()
                ));
            };
            match name {
                "Sub" => Value::Duration(
                    (t.as_nanos() - u.as_nanos()).clamp(i64::MIN as i128, i64::MAX as i128) as i64,
                ),
                "Before" => Value::Bool(t < u),
                "After" => Value::Bool(t > u),
                _ => Value::Bool(t == u),
            }
        }
        _ => Value::Nil,
    })
}

// ---------------------------------------------------------------------------
// Go's builtin functions.

pub(crate) const BUILTINS: [&str; 19] = [
    "and", "call", "html", "index", "slice", "js", "len", "not", "or", "print", "printf",
    "println", "urlquery", "eq", "ge", "gt", "le", "lt", "ne",
];

pub(crate) fn builtin_arity(name: &str) -> Option<(usize, Option<usize>)> {
    Some(match name {
        "and" | "or" => (1, None),
        "call" => (1, None),
        "html" | "js" | "urlquery" | "print" | "println" => (0, None),
        "printf" => (1, None),
        "index" | "slice" => (1, None),
        "len" | "not" => (1, Some(1)),
        "eq" => (1, None),
        "ge" | "gt" | "le" | "lt" | "ne" => (2, Some(2)),
        _ => return None,
    })
}

/// The text of `html`/`js`/`urlquery`'s arguments: one string as is, or
/// `fmt.Sprint` of them all.
fn eval_args_text(args: &[Value]) -> String {
    match args {
        [Value::Str(s)] => s.to_string(),
        _ => sprint(args),
    }
}

#[derive(PartialEq, PartialOrd)]
enum Basic<'a> {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
}

fn basic(v: &Value) -> Option<Basic<'_>> {
    Some(match v {
        Value::Bool(b) => Basic::Bool(*b),
        Value::Int(i) | Value::Duration(i) => Basic::Int(*i),
        Value::Float(f) => Basic::Float(*f),
        Value::Str(s) => Basic::Str(s),
        _ => return None,
    })
}

fn same_kind(a: &Basic<'_>, b: &Basic<'_>) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

fn eq2(a: &Value, b: &Value) -> Result<bool, String> {
    match (basic(a), basic(b)) {
        (Some(x), Some(y)) => {
            if !same_kind(&x, &y) {
                return Err("incompatible types for comparison".into());
            }
            Ok(x == y)
        }
        (None, None) if matches!(a, Value::Nil) && matches!(b, Value::Nil) => Ok(true),
        (None, _) if matches!(a, Value::Time(_)) => match (a, b) {
            (Value::Time(x), Value::Time(y)) => Ok(x == y),
            _ => Err("incompatible types for comparison".into()),
        },
        (None, _) if !matches!(a, Value::Nil) => Err(format!(
            "non-comparable type {}: {}",
            a.type_name(),
            super::value::to_v(a)
        )),
        _ => Err("incompatible types for comparison".into()),
    }
}

fn lt2(a: &Value, b: &Value) -> Result<bool, String> {
    match (basic(a), basic(b)) {
        (Some(Basic::Bool(_)), _) | (_, Some(Basic::Bool(_))) => {
            Err("invalid type for comparison".into())
        }
        (Some(x), Some(y)) => {
            if !same_kind(&x, &y) {
                return Err("incompatible types for comparison".into());
            }
            Ok(x < y)
        }
        _ => Err("invalid type for comparison".into()),
    }
}

fn js_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '<' => out.push_str("\\u003C"),
            '>' => out.push_str("\\u003E"),
            '&' => out.push_str("\\u0026"),
            '=' => out.push_str("\\u003D"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04X}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn html_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&#39;"),
            '"' => out.push_str("&#34;"),
            '\0' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn index_of(v: &Value, len: usize, cap: usize) -> Result<usize, String> {
    match v {
        Value::Int(i) => {
            if *i < 0 || *i as usize > cap {
                return Err(format!("index out of range: {i}"));
            }
            let _ = len;
            Ok(*i as usize)
        }
        Value::Nil => Err("cannot index slice/array with nil".into()),
        o => Err(format!(
            "cannot index slice/array with type {}",
            o.type_name()
        )),
    }
}

/// Go's builtins (other than `and`/`or`); None if `name` is not one.
fn builtin(name: &str, args: &[Value]) -> Option<Result<Value, CallError>> {
    let call = |r: Result<Value, String>| r.map_err(CallError::Call);
    Some(match name {
        "not" => Ok(Value::Bool(!args[0].truth())),
        "len" => call(match &args[0] {
            Value::Str(s) => Ok(Value::Int(s.len() as i64)),
            Value::List(l) | Value::Alerts(l) => Ok(Value::Int(l.len() as i64)),
            Value::Map(m) => Ok(Value::Int(m.len() as i64)),
            Value::Labels(m) => Ok(Value::Int(m.len() as i64)),
            Value::Pairs(p) => Ok(Value::Int(p.len() as i64)),
            Value::Nil => Err("len of nil pointer".into()),
            o => Err(format!("len of type {}", o.type_name())),
        }),
        "print" => Ok(Value::str(sprint(args))),
        "println" => Ok(Value::str(sprintln(args))),
        "printf" => match &args[0] {
            Value::Str(f) => Ok(Value::str(sprintf(f, &args[1..]))),
            o => Err(CallError::Plain(format!(
                "wrong type for value; expected string; got {}",
                o.type_name()
            ))),
        },
        "html" => Ok(Value::str(html_escape(&eval_args_text(args)))),
        "js" => Ok(Value::str(js_escape(&eval_args_text(args)))),
        "urlquery" => Ok(Value::str(funcs::query_escape(&eval_args_text(args)))),
        "call" => Err(CallError::Call("call is not supported".into())),
        "eq" => {
            if args.len() < 2 {
                return Some(Err(CallError::Call(
                    "missing argument for comparison".into(),
                )));
            }
            for b in &args[1..] {
                match eq2(&args[0], b) {
                    Ok(true) => return Some(Ok(Value::Bool(true))),
                    Ok(false) => {}
                    Err(e) => return Some(Err(CallError::Call(e))),
                }
            }
            Ok(Value::Bool(false))
        }
        "ne" => call(eq2(&args[0], &args[1]).map(|b| Value::Bool(!b))),
        "lt" => call(lt2(&args[0], &args[1]).map(Value::Bool)),
        "le" => call(
            lt2(&args[0], &args[1])
                .and_then(|l| Ok(l || eq2(&args[0], &args[1])?))
                .map(Value::Bool),
        ),
        "gt" => call(
            lt2(&args[0], &args[1])
                .and_then(|l| Ok(!l && !eq2(&args[0], &args[1])?))
                .map(Value::Bool),
        ),
        "ge" => call(lt2(&args[0], &args[1]).map(|l| Value::Bool(!l))),
        "index" => call(index(args)),
        "slice" => call(slice(args)),
        _ => return None,
    })
}

fn index(args: &[Value]) -> Result<Value, String> {
    let mut item = args[0].clone();
    for ix in &args[1..] {
        item = match &item {
            Value::List(l) | Value::Alerts(l) => {
                l[index_of(ix, l.len(), l.len().saturating_sub(1))?].clone()
            }
            Value::Pairs(p) => {
                let (k, v) = &p[index_of(ix, p.len(), p.len().saturating_sub(1))?];
                pair_value(k, v)
            }
            Value::Str(s) => {
                if s.is_empty() {
                    return Err(format!("index out of range: {}", super::value::to_v(ix)));
                }
                Value::Int(i64::from(s.as_bytes()[index_of(ix, s.len(), s.len() - 1)?]))
            }
            Value::Map(m) => match ix {
                Value::Str(k) => m.get(&**k).cloned().unwrap_or(Value::Nil),
                o => {
                    return Err(format!(
                        "value has type {}; should be string",
                        o.type_name()
                    ));
                }
            },
            Value::Labels(m) => match ix {
                Value::Str(k) => Value::str(m.get(&**k).map_or("", String::as_str)),
                o => {
                    return Err(format!(
                        "value has type {}; should be string",
                        o.type_name()
                    ));
                }
            },
            Value::Nil => return Err("index of untyped nil".into()),
            o => return Err(format!("can't index item of type {}", o.type_name())),
        };
    }
    Ok(item)
}

fn slice(args: &[Value]) -> Result<Value, String> {
    let item = &args[0];
    let len = match item {
        Value::Str(s) => s.len(),
        Value::List(l) => l.len(),
        Value::Nil => return Err("slice of untyped nil".into()),
        o => return Err(format!("can't slice item of type {}", o.type_name())),
    };
    if args.len() > 4 || (args.len() == 4 && matches!(item, Value::Str(_))) {
        return Err(format!("too many slice indexes: {}", args.len() - 1));
    }
    let mut idx = [0usize, len, len];
    for (i, a) in args[1..].iter().enumerate() {
        idx[i] = index_of(a, len, len)?;
    }
    if args.len() < 3 {
        idx[1] = len;
    }
    if idx[0] > idx[1] {
        return Err(format!("invalid slice index: {} > {}", idx[0], idx[1]));
    }
    if args.len() == 4 && idx[1] > idx[2] {
        return Err(format!("invalid slice index: {} > {}", idx[1], idx[2]));
    }
    Ok(match item {
        Value::Str(s) => match s.get(idx[0]..idx[1]) {
            Some(sub) => Value::str(sub),
            None => Value::str(String::from_utf8_lossy(&s.as_bytes()[idx[0]..idx[1]]).as_ref()),
        },
        Value::List(l) => Value::list(l[idx[0]..idx[1]].to_vec()),
        _ => Value::Nil,
    })
}

/// A `map[string]interface{}` from pairs.
pub(crate) fn map_of(pairs: Vec<(String, Value)>) -> Value {
    Value::Map(Rc::new(pairs.into_iter().collect::<BTreeMap<_, _>>()))
}
