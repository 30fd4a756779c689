//! Decoder for the `pgoutput` logical replication messages, protocol
//! version 1 (PostgreSQL 10+; what `START_REPLICATION … (proto_version '1')`
//! asks for). Formats: PostgreSQL docs, "Logical Replication Message
//! Formats". Text-mode tuples only (we never ask for `binary`), though a
//! binary column is decoded as bytes rather than refused.
//!
//! Bad input is an error naming the message tag and byte offset, never a
//! panic: every read is bounds-checked and no count read from the wire
//! sizes an allocation beyond what the remaining bytes could hold. A
//! property test over random and mutated bytes keeps it that way.

use bytes::Bytes;

/// Log sequence number.
pub type Lsn = u64;

/// Formats an LSN the way PostgreSQL prints it (`16/B374D848`).
pub fn fmt_lsn(lsn: Lsn) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Parses `16/B374D848`.
pub fn parse_lsn(s: &str) -> Option<Lsn> {
    let (hi, lo) = s.split_once('/')?;
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// 1: part of the replica identity (key).
    pub flags: u8,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

/// One column of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    Null,
    /// A TOASTed value the update did not change: its value is not in the
    /// stream. Never the same as NULL.
    UnchangedToast,
    Text(Bytes),
    Binary(Bytes),
}

impl Datum {
    /// The text form, if the column carries one.
    pub fn text(&self) -> Option<&str> {
        match self {
            Datum::Text(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

/// Which old image an update or delete carries: `K` (replica identity
/// columns only) or `O` (the whole old row, REPLICA IDENTITY FULL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    Key,
    Full,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: Lsn,
        /// Microseconds since 2000-01-01 UTC.
        commit_time: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
    Origin {
        commit_lsn: Lsn,
        name: String,
    },
    Relation(Relation),
    Type {
        id: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation: u32,
        new: Vec<Datum>,
    },
    Update {
        relation: u32,
        old: Option<(OldKind, Vec<Datum>)>,
        new: Vec<Datum>,
    },
    Delete {
        relation: u32,
        old: (OldKind, Vec<Datum>),
    },
    Truncate {
        /// 1: CASCADE, 2: RESTART IDENTITY.
        options: u8,
        relations: Vec<u32>,
    },
    /// `pg_logical_emit_message`.
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
}

/// Malformed pgoutput data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pgoutput message {tag:?} at byte {offset}: {problem}")]
pub struct DecodeError {
    pub tag: char,
    pub offset: usize,
    pub problem: &'static str,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    tag: char,
    whole: &'a Bytes,
}

impl<'a> Reader<'a> {
    fn err(&self, problem: &'static str) -> DecodeError {
        DecodeError {
            tag: self.tag,
            offset: self.pos,
            problem,
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| self.err("message ends early"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i16(&mut self) -> Result<i16, DecodeError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }
    fn cstr(&mut self) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos..];
        let nul = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| self.err("string without terminator"))?;
        let s = std::str::from_utf8(&rest[..nul])
            .map_err(|_| self.err("string is not UTF-8"))?
            .to_string();
        self.pos += nul + 1;
        Ok(s)
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(n)?;
        Ok(self.whole.slice(start..start + n))
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn tuple(&mut self) -> Result<Vec<Datum>, DecodeError> {
        let n = self.i16()?;
        let n = usize::try_from(n).map_err(|_| self.err("negative column count"))?;
        // Each column takes at least one byte.
        if n > self.remaining() {
            return Err(self.err("column count exceeds the message"));
        }
        let mut cols = Vec::with_capacity(n);
        for _ in 0..n {
            cols.push(match self.u8()? {
                b'n' => Datum::Null,
                b'u' => Datum::UnchangedToast,
                kind @ (b't' | b'b') => {
                    let len = self.i32()?;
                    let len = usize::try_from(len).map_err(|_| self.err("negative length"))?;
                    let v = self.bytes(len)?;
                    if kind == b't' {
                        Datum::Text(v)
                    } else {
                        Datum::Binary(v)
                    }
                }
                _ => return Err(self.err("unknown column kind")),
            });
        }
        Ok(cols)
    }
    fn old_kind(&mut self, b: u8) -> Result<OldKind, DecodeError> {
        match b {
            b'K' => Ok(OldKind::Key),
            b'O' => Ok(OldKind::Full),
            _ => Err(self.err("expected tuple kind K or O")),
        }
    }
}

/// Decodes one pgoutput message (the data of an XLogData frame).
pub fn decode(data: &Bytes) -> Result<Message, DecodeError> {
    let Some(&tag) = data.first() else {
        return Err(DecodeError {
            tag: '?',
            offset: 0,
            problem: "empty message",
        });
    };
    let mut r = Reader {
        buf: data,
        pos: 1,
        tag: char::from(tag),
        whole: data,
    };
    let m = match tag {
        b'B' => Message::Begin {
            final_lsn: r.u64()?,
            commit_time: r.i64()?,
            xid: r.u32()?,
        },
        b'C' => Message::Commit {
            flags: r.u8()?,
            commit_lsn: r.u64()?,
            end_lsn: r.u64()?,
            commit_time: r.i64()?,
        },
        b'O' => Message::Origin {
            commit_lsn: r.u64()?,
            name: r.cstr()?,
        },
        b'R' => {
            let id = r.u32()?;
            let namespace = r.cstr()?;
            let name = r.cstr()?;
            let replica_identity = r.u8()?;
            let n = usize::try_from(r.i16()?).map_err(|_| r.err("negative column count"))?;
            // Each column takes at least 10 bytes.
            if n > r.remaining() / 10 {
                return Err(r.err("column count exceeds the message"));
            }
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                columns.push(Column {
                    flags: r.u8()?,
                    name: r.cstr()?,
                    type_oid: r.u32()?,
                    type_modifier: r.i32()?,
                });
            }
            Message::Relation(Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            id: r.u32()?,
            namespace: r.cstr()?,
            name: r.cstr()?,
        },
        b'I' => {
            let relation = r.u32()?;
            if r.u8()? != b'N' {
                return Err(r.err("expected tuple kind N"));
            }
            Message::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let mut kind = r.u8()?;
            let old = if kind == b'N' {
                None
            } else {
                let k = r.old_kind(kind)?;
                let t = r.tuple()?;
                kind = r.u8()?;
                if kind != b'N' {
                    return Err(r.err("expected tuple kind N"));
                }
                Some((k, t))
            };
            Message::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            let kind = r.u8()?;
            let k = r.old_kind(kind)?;
            Message::Delete {
                relation,
                old: (k, r.tuple()?),
            }
        }
        b'T' => {
            let n = usize::try_from(r.i32()?).map_err(|_| r.err("negative relation count"))?;
            let options = r.u8()?;
            if n > r.remaining() / 4 {
                return Err(r.err("relation count exceeds the message"));
            }
            let mut relations = Vec::with_capacity(n);
            for _ in 0..n {
                relations.push(r.u32()?);
            }
            Message::Truncate { options, relations }
        }
        b'M' => {
            let flags = r.u8()?;
            let lsn = r.u64()?;
            let prefix = r.cstr()?;
            let len = usize::try_from(r.i32()?).map_err(|_| r.err("negative length"))?;
            Message::Message {
                transactional: flags & 1 == 1,
                lsn,
                prefix,
                content: r.bytes(len)?,
            }
        }
        _ => return Err(r.err("unknown message tag")),
    };
    Ok(m)
}

/// Encoders for the tests (the server's side of the format).
#[cfg(test)]
pub(crate) mod encode {
    use super::*;

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn tuple(out: &mut Vec<u8>, t: &[Datum]) {
        out.extend_from_slice(&i16::try_from(t.len()).unwrap().to_be_bytes());
        for d in t {
            match d {
                Datum::Null => out.push(b'n'),
                Datum::UnchangedToast => out.push(b'u'),
                Datum::Text(b) | Datum::Binary(b) => {
                    out.push(if matches!(d, Datum::Text(_)) {
                        b't'
                    } else {
                        b'b'
                    });
                    out.extend_from_slice(&i32::try_from(b.len()).unwrap().to_be_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
    }

    fn old(out: &mut Vec<u8>, k: OldKind, t: &[Datum]) {
        out.push(if k == OldKind::Key { b'K' } else { b'O' });
        tuple(out, t);
    }

    pub fn message(m: &Message) -> Vec<u8> {
        let mut o = vec![];
        match m {
            Message::Begin {
                final_lsn,
                commit_time,
                xid,
            } => {
                o.push(b'B');
                o.extend_from_slice(&final_lsn.to_be_bytes());
                o.extend_from_slice(&commit_time.to_be_bytes());
                o.extend_from_slice(&xid.to_be_bytes());
            }
            Message::Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time,
            } => {
                o.push(b'C');
                o.push(*flags);
                o.extend_from_slice(&commit_lsn.to_be_bytes());
                o.extend_from_slice(&end_lsn.to_be_bytes());
                o.extend_from_slice(&commit_time.to_be_bytes());
            }
            Message::Origin { commit_lsn, name } => {
                o.push(b'O');
                o.extend_from_slice(&commit_lsn.to_be_bytes());
                cstr(&mut o, name);
            }
            Message::Relation(r) => {
                o.push(b'R');
                o.extend_from_slice(&r.id.to_be_bytes());
                cstr(&mut o, &r.namespace);
                cstr(&mut o, &r.name);
                o.push(r.replica_identity);
                o.extend_from_slice(&i16::try_from(r.columns.len()).unwrap().to_be_bytes());
                for c in &r.columns {
                    o.push(c.flags);
                    cstr(&mut o, &c.name);
                    o.extend_from_slice(&c.type_oid.to_be_bytes());
                    o.extend_from_slice(&c.type_modifier.to_be_bytes());
                }
            }
            Message::Type {
                id,
                namespace,
                name,
            } => {
                o.push(b'Y');
                o.extend_from_slice(&id.to_be_bytes());
                cstr(&mut o, namespace);
                cstr(&mut o, name);
            }
            Message::Insert { relation, new } => {
                o.push(b'I');
                o.extend_from_slice(&relation.to_be_bytes());
                o.push(b'N');
                tuple(&mut o, new);
            }
            Message::Update {
                relation,
                old: x,
                new,
            } => {
                o.push(b'U');
                o.extend_from_slice(&relation.to_be_bytes());
                if let Some((k, t)) = x {
                    old(&mut o, *k, t);
                }
                o.push(b'N');
                tuple(&mut o, new);
            }
            Message::Delete { relation, old: x } => {
                o.push(b'D');
                o.extend_from_slice(&relation.to_be_bytes());
                old(&mut o, x.0, &x.1);
            }
            Message::Truncate { options, relations } => {
                o.push(b'T');
                o.extend_from_slice(&i32::try_from(relations.len()).unwrap().to_be_bytes());
                o.push(*options);
                for r in relations {
                    o.extend_from_slice(&r.to_be_bytes());
                }
            }
            Message::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => {
                o.push(b'M');
                o.push(u8::from(*transactional));
                o.extend_from_slice(&lsn.to_be_bytes());
                cstr(&mut o, prefix);
                o.extend_from_slice(&i32::try_from(content.len()).unwrap().to_be_bytes());
                o.extend_from_slice(content);
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Message> {
        let text = |s: &str| Datum::Text(Bytes::copy_from_slice(s.as_bytes()));
        vec![
            Message::Begin {
                final_lsn: 0x16_B374_D848,
                commit_time: 784_000_000_000_000,
                xid: 771,
            },
            Message::Commit {
                flags: 0,
                commit_lsn: 0x16_B374_D848,
                end_lsn: 0x16_B374_D878,
                commit_time: 784_000_000_000_000,
            },
            Message::Origin {
                commit_lsn: 7,
                name: "godata_bridge".into(),
            },
            Message::Relation(Relation {
                id: 16_384,
                namespace: "hmis".into(),
                name: "cases".into(),
                replica_identity: b'd',
                columns: vec![
                    Column {
                        flags: 1,
                        name: "case_id".into(),
                        type_oid: 23,
                        type_modifier: -1,
                    },
                    Column {
                        flags: 0,
                        name: "notes".into(),
                        type_oid: 25,
                        type_modifier: -1,
                    },
                ],
            }),
            Message::Type {
                id: 90_000,
                namespace: "hmis".into(),
                name: "sex".into(),
            },
            Message::Insert {
                relation: 16_384,
                new: vec![text("1"), Datum::Null],
            },
            Message::Update {
                relation: 16_384,
                old: Some((OldKind::Key, vec![text("1"), Datum::Null])),
                new: vec![text("2"), Datum::UnchangedToast],
            },
            Message::Update {
                relation: 16_384,
                old: None,
                new: vec![text("2"), Datum::Binary(Bytes::from_static(b"\x00\x01"))],
            },
            Message::Delete {
                relation: 16_384,
                old: (OldKind::Full, vec![text("2"), text("x")]),
            },
            Message::Truncate {
                options: 1,
                relations: vec![16_384, 16_390],
            },
            Message::Message {
                transactional: false,
                lsn: 99,
                prefix: "godata_bridge.heartbeat".into(),
                content: Bytes::from_static(b"{}"),
            },
        ]
    }

    #[test]
    fn every_message_kind_round_trips() {
        for m in samples() {
            let bytes = Bytes::from(encode::message(&m));
            assert_eq!(decode(&bytes).unwrap(), m);
        }
    }

    #[test]
    fn unchanged_toast_is_not_null() {
        let m = decode(&Bytes::from(encode::message(&samples()[6]))).unwrap();
        let Message::Update { new, .. } = m else {
            panic!("update expected")
        };
        assert_eq!(new[1], Datum::UnchangedToast);
        assert_ne!(new[1], Datum::Null);
    }

    #[test]
    fn truncated_and_unknown_input_are_errors_naming_the_place() {
        let insert = encode::message(&samples()[5]);
        let e = decode(&Bytes::from(insert[..insert.len() - 1].to_vec())).unwrap_err();
        assert_eq!(e.tag, 'I');
        assert!(e.to_string().contains("ends early"), "{e}");
        let e = decode(&Bytes::from_static(b"Zxyz")).unwrap_err();
        assert!(e.to_string().contains("unknown message tag"), "{e}");
        // A huge column count must not allocate for it.
        let mut r = encode::message(&samples()[3]);
        let at = 1 + 4 + "hmis\0".len() + "cases\0".len() + 1; // the column count
        r[at..at + 2].copy_from_slice(&i16::MAX.to_be_bytes());
        assert!(decode(&Bytes::from(r)).is_err());
    }

    /// Property: no input makes the decoder panic — random bytes, random
    /// bytes behind each valid tag, and valid messages with random bytes
    /// flipped, cut or appended. The seed is printed so a failure can be
    /// replayed with `PGOUTPUT_FUZZ_SEED`.
    #[test]
    fn no_input_makes_the_decoder_panic() {
        let seed = std::env::var("PGOUTPUT_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| fastrand::u64(..));
        let iterations: usize = std::env::var("PGOUTPUT_FUZZ_ITERATIONS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(500_000);
        eprintln!("pgoutput fuzz seed {seed}, {iterations} iterations");
        let mut rng = fastrand::Rng::with_seed(seed);
        let valid: Vec<Vec<u8>> = samples().iter().map(encode::message).collect();
        let tags = b"BCORYIUDTMZ";
        let mut decoded = 0usize;
        for i in 0..iterations {
            let input: Vec<u8> = match i % 3 {
                0 => (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect(),
                1 => {
                    let mut v = vec![tags[rng.usize(..tags.len())]];
                    v.extend((0..rng.usize(0..80)).map(|_| rng.u8(..)));
                    v
                }
                _ => {
                    let mut v = valid[rng.usize(..valid.len())].clone();
                    for _ in 0..rng.usize(1..4) {
                        match rng.u8(0..3) {
                            0 if !v.is_empty() => {
                                let at = rng.usize(..v.len());
                                v[at] = rng.u8(..);
                            }
                            1 if !v.is_empty() => v.truncate(rng.usize(..v.len())),
                            _ => v.push(rng.u8(..)),
                        }
                    }
                    v
                }
            };
            if decode(&Bytes::from(input)).is_ok() {
                decoded += 1;
            }
        }
        // The mutations keep some messages valid: the test reaches the
        // decoder's success paths, not only its first check.
        assert!(decoded > 0, "seed {seed}: nothing decoded");
    }

    #[test]
    fn lsn_text_form_round_trips() {
        assert_eq!(fmt_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("nope"), None);
    }
}
