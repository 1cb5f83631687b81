//! Where each field of a YAML document is, so that errors found after
//! parsing (an unknown backend, a duplicate name) can name the line too.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Field path (`listeners[0].routes[1].name`) to 1-based line number.
#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

impl LineIndex {
    /// Indexes `yaml`; a document that does not parse gives an empty index
    /// (serde reports the syntax error with its own position).
    pub fn new(yaml: &str) -> LineIndex {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(yaml);
        if parser.load(&mut builder, false).is_err() {
            return LineIndex::default();
        }
        LineIndex {
            lines: builder.lines,
        }
    }

    /// The line of `path`, or of its nearest indexed parent.
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

#[derive(Debug)]
enum Frame {
    Map { key: Option<String> },
    Seq { index: usize },
}

#[derive(Debug, Default)]
struct Builder {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

impl Builder {
    fn path(&self) -> String {
        let mut out = String::new();
        for f in &self.stack {
            match f {
                Frame::Map { key: Some(k) } => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Frame::Map { key: None } => {}
                Frame::Seq { index } => out.push_str(&format!("[{index}]")),
            }
        }
        out
    }

    /// A value (scalar or collection) was completed in the current frame.
    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key }) => *key = None,
            Some(Frame::Seq { index }) => *index += 1,
            None => {}
        }
    }

    fn record(&mut self, line: usize) {
        let path = self.path();
        self.lines.entry(path).or_insert(line);
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map { key: key @ None }) = self.stack.last_mut() {
                    *key = Some(value);
                    self.record(line);
                } else {
                    self.record(line);
                    self.value_done();
                }
            }
            Event::MappingStart(..) => {
                self.record(line);
                self.stack.push(Frame::Map { key: None });
            }
            Event::SequenceStart(..) => {
                self.record(line);
                self.stack.push(Frame::Seq { index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            Event::Alias(_) => self.value_done(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_fields() {
        let doc = "a: 1\nlist:\n  - name: x\n    inner:\n      deep: 2\n  - name: y\n";
        let idx = LineIndex::new(doc);
        assert_eq!(idx.line("a"), Some(1));
        assert_eq!(idx.line("list[0].name"), Some(3));
        assert_eq!(idx.line("list[0].inner.deep"), Some(5));
        assert_eq!(idx.line("list[1].name"), Some(6));
        assert_eq!(idx.line("list[1].missing"), Some(6));
    }
}
