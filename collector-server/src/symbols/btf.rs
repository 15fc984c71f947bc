//! A reader for the BPF Type Format, the type description a kernel built
//! with `CONFIG_DEBUG_INFO_BTF` exports at `/sys/kernel/btf/vmlinux`.
//!
//! Layout (kernel `Documentation/bpf/btf.rst`): a header (magic `0xeb9f`,
//! version 1, offsets of the type and string sections after the header),
//! then type records, each a 12-byte `btf_type` (name offset, info word
//! with kind and `vlen`, size-or-type) followed by kind-specific data of a
//! length fixed by the kind. Type ids count from 1 in file order; id 0 is
//! `void`.
//!
//! The file comes from an investigated host, so it is data from an
//! adversary: every offset is checked, a kind this reader does not know
//! ends the parse with an error (its trailing length is unknown), names
//! are decoded lossily, and nothing here follows type references; that is
//! left to callers, which must bound their depth (a hostile file can make
//! a typedef refer to itself).

/// Why a BTF blob could not be read.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    /// Not BTF, or a byte order this reader does not take.
    #[error("not little-endian BTF (magic {0:#06x})")]
    Magic(u16),
    /// A header, section or record runs past the data.
    #[error("BTF is truncated or inconsistent: {0}")]
    Truncated(&'static str),
    /// A kind with an unknown trailing layout.
    #[error("BTF type {id} has unknown kind {kind}")]
    UnknownKind {
        /// Type id.
        id: u32,
        /// The kind number.
        kind: u32,
    },
}

/// A struct or union member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Member name; empty for an anonymous struct/union member.
    pub name: String,
    /// Member type id.
    pub type_id: u32,
    /// Offset in bits from the start of the aggregate.
    pub bit_offset: u32,
    /// Bitfield width in bits, 0 when not a bitfield (or when the width is
    /// carried by an `Int`'s `bits`, the older encoding).
    pub bitfield_size: u32,
}

/// One BTF type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Type {
    /// Id 0.
    Void,
    /// An integer; `bits` below `size * 8` or a non-zero `offset` is the
    /// older bitfield encoding.
    Int {
        /// C name (`long unsigned int`).
        name: String,
        /// Bytes.
        size: u32,
        /// Signed.
        signed: bool,
        /// A character type.
        char: bool,
        /// `_Bool`.
        boolean: bool,
        /// Bit offset of the value.
        offset: u32,
        /// Bits used.
        bits: u32,
    },
    /// A pointer.
    Ptr(u32),
    /// An array.
    Array {
        /// Element type.
        elem: u32,
        /// Element count.
        count: u32,
    },
    /// A struct or union.
    Struct {
        /// Name; empty when anonymous.
        name: String,
        /// Bytes.
        size: u32,
        /// True for a union.
        union: bool,
        /// Members in order.
        members: Vec<Member>,
    },
    /// An enum (`ENUM` or `ENUM64`).
    Enum {
        /// Name; empty when anonymous.
        name: String,
        /// Bytes.
        size: u32,
        /// Signed values.
        signed: bool,
        /// Enumerators.
        values: Vec<(String, i64)>,
    },
    /// A forward declaration.
    Fwd {
        /// Name.
        name: String,
        /// True for `union`.
        union: bool,
    },
    /// A typedef.
    Typedef {
        /// Name.
        name: String,
        /// Aliased type.
        type_id: u32,
    },
    /// `volatile`, `const`, `restrict`, or a type tag: no layout of its own.
    Modifier(u32),
    /// A function (a name for a `FuncProto`).
    Func {
        /// Name.
        name: String,
    },
    /// A function prototype.
    FuncProto,
    /// A variable (in vmlinux, per-CPU ones).
    Var {
        /// Name.
        name: String,
        /// Its type.
        type_id: u32,
    },
    /// A floating-point type.
    Float {
        /// Name.
        name: String,
        /// Bytes.
        size: u32,
    },
    /// A data section or a declaration tag: nothing a symbol table needs.
    Other,
}

/// A parsed BTF blob: `types[id]`.
#[derive(Debug)]
pub struct Btf {
    types: Vec<Type>,
}

const MAGIC: u16 = 0xeb9f;

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(o..o.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(o..o.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn section<'a>(
    data: &'a [u8],
    start: u32,
    len: u32,
    what: &'static str,
) -> Result<&'a [u8], BtfError> {
    let start = usize::try_from(start).map_err(|_| BtfError::Truncated(what))?;
    let len = usize::try_from(len).map_err(|_| BtfError::Truncated(what))?;
    start
        .checked_add(len)
        .and_then(|end| data.get(start..end))
        .ok_or(BtfError::Truncated(what))
}

/// A name from the string section (lossy; empty when out of range).
fn name_at(strings: &[u8], off: u32) -> String {
    let Some(tail) = usize::try_from(off).ok().and_then(|o| strings.get(o..)) else {
        return String::new();
    };
    let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
    String::from_utf8_lossy(tail.get(..end).unwrap_or_default()).into_owned()
}

impl Btf {
    /// Parses a BTF blob.
    ///
    /// # Errors
    /// [`BtfError`] when it is not BTF or is inconsistent.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let magic = u16_at(data, 0).ok_or(BtfError::Truncated("header"))?;
        if magic != MAGIC {
            return Err(BtfError::Magic(magic));
        }
        let hdr_len = u32_at(data, 4).ok_or(BtfError::Truncated("header"))?;
        let field = |o| u32_at(data, o).ok_or(BtfError::Truncated("header"));
        let (type_off, type_len, str_off, str_len) =
            (field(8)?, field(12)?, field(16)?, field(20)?);
        let body = data
            .get(usize::try_from(hdr_len).map_err(|_| BtfError::Truncated("header"))?..)
            .ok_or(BtfError::Truncated("header"))?;
        let types_data = section(body, type_off, type_len, "type section")?;
        let strings = section(body, str_off, str_len, "string section")?;

        let mut types = vec![Type::Void];
        let mut at = 0usize;
        while at < types_data.len() {
            let id = u32::try_from(types.len()).map_err(|_| BtfError::Truncated("type count"))?;
            let (ty, len) = parse_type(types_data, at, strings, id)?;
            types.push(ty);
            at = at
                .checked_add(len)
                .ok_or(BtfError::Truncated("type record"))?;
        }
        Ok(Self { types })
    }

    /// The type with id `id` (`None` past the end).
    #[must_use]
    pub fn get(&self, id: u32) -> Option<&Type> {
        self.types.get(usize::try_from(id).ok()?)
    }

    /// Every type with its id, `void` first.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Type)> {
        (0u32..).zip(self.types.iter())
    }

    /// Number of types including `void`.
    #[must_use]
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// True when only `void` is present.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.types.len() <= 1
    }

    /// The first struct (not union) named `name`.
    #[must_use]
    pub fn struct_named(&self, name: &str) -> Option<(u32, &Type)> {
        self.iter()
            .find(|(_, t)| matches!(t, Type::Struct { name: n, union: false, .. } if n == name))
    }
}

/// Parses the record at `at`; returns the type and the record's length.
fn parse_type(data: &[u8], at: usize, strings: &[u8], id: u32) -> Result<(Type, usize), BtfError> {
    let short = BtfError::Truncated("type record");
    let word = |o: usize| {
        at.checked_add(o)
            .and_then(|p| u32_at(data, p))
            .ok_or(short.clone())
    };
    let name = name_at(strings, word(0)?);
    let info = word(4)?;
    let size_or_type = word(8)?;
    let vlen = usize::try_from(info & 0xffff).map_err(|_| short.clone())?;
    let kind = (info >> 24) & 0x1f;
    let kind_flag = info >> 31 == 1;
    let extra = |each: usize| vlen.checked_mul(each).ok_or(short.clone());
    let list = |each: usize| -> Result<Vec<usize>, BtfError> {
        // Checks the whole list is present before anything is allocated.
        let end = at
            .checked_add(12)
            .and_then(|s| s.checked_add(vlen.checked_mul(each)?))
            .ok_or(short.clone())?;
        if end > data.len() {
            return Err(short.clone());
        }
        Ok((0..vlen).map(|i| 12 + i * each).collect())
    };
    let (ty, tail) = match kind {
        1 => {
            let enc = word(12)?;
            let encoding = enc >> 24;
            (
                Type::Int {
                    name,
                    size: size_or_type,
                    signed: encoding & 1 != 0,
                    char: encoding & 2 != 0,
                    boolean: encoding & 4 != 0,
                    offset: (enc >> 16) & 0xff,
                    bits: enc & 0xff,
                },
                4,
            )
        }
        2 => (Type::Ptr(size_or_type), 0),
        3 => (
            Type::Array {
                elem: word(12)?,
                count: word(20)?,
            },
            12,
        ),
        4 | 5 => {
            let mut members = Vec::with_capacity(vlen);
            for o in list(12)? {
                let offset = word(o + 8)?;
                let (bit_offset, bitfield_size) = if kind_flag {
                    (offset & 0x00ff_ffff, offset >> 24)
                } else {
                    (offset, 0)
                };
                members.push(Member {
                    name: name_at(strings, word(o)?),
                    type_id: word(o + 4)?,
                    bit_offset,
                    bitfield_size,
                });
            }
            (
                Type::Struct {
                    name,
                    size: size_or_type,
                    union: kind == 5,
                    members,
                },
                extra(12)?,
            )
        }
        6 => {
            let mut values = Vec::with_capacity(vlen);
            for o in list(8)? {
                #[allow(clippy::cast_possible_wrap)]
                let raw = word(o + 4)?;
                let v = if kind_flag {
                    i64::from(raw.cast_signed())
                } else {
                    i64::from(raw)
                };
                values.push((name_at(strings, word(o)?), v));
            }
            (
                Type::Enum {
                    name,
                    size: size_or_type,
                    signed: kind_flag,
                    values,
                },
                extra(8)?,
            )
        }
        19 => {
            let mut values = Vec::with_capacity(vlen);
            for o in list(12)? {
                let v = u64::from(word(o + 4)?) | (u64::from(word(o + 8)?) << 32);
                values.push((name_at(strings, word(o)?), v.cast_signed()));
            }
            (
                Type::Enum {
                    name,
                    size: size_or_type,
                    signed: kind_flag,
                    values,
                },
                extra(12)?,
            )
        }
        7 => (
            Type::Fwd {
                name,
                union: kind_flag,
            },
            0,
        ),
        8 => (
            Type::Typedef {
                name,
                type_id: size_or_type,
            },
            0,
        ),
        9..=11 | 18 => (Type::Modifier(size_or_type), 0),
        12 => (Type::Func { name }, 0),
        13 => {
            list(8)?;
            (Type::FuncProto, extra(8)?)
        }
        14 => (
            Type::Var {
                name,
                type_id: size_or_type,
            },
            4,
        ),
        15 => {
            list(12)?;
            (Type::Other, extra(12)?)
        }
        16 => (
            Type::Float {
                name,
                size: size_or_type,
            },
            0,
        ),
        17 => (Type::Other, 4),
        _ => return Err(BtfError::UnknownKind { id, kind }),
    };
    let len = 12usize.checked_add(tail).ok_or(short.clone())?;
    if at.checked_add(len).is_none_or(|end| end > data.len()) {
        return Err(short);
    }
    Ok((ty, len))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds BTF from `(name, info, size_or_type, extra words)` records.
    pub(crate) fn build(names: &[&str], records: &[(u32, u32, u32, Vec<u32>)]) -> Vec<u8> {
        let mut strings = vec![0u8];
        for n in names {
            strings.extend_from_slice(n.as_bytes());
            strings.push(0);
        }
        let mut types = Vec::new();
        for (name, info, sot, extra) in records {
            for w in [*name, *info, *sot].iter().chain(extra) {
                types.extend_from_slice(&w.to_le_bytes());
            }
        }
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(&strings);
        out
    }

    /// Offset of `name` in the string section [`build`] makes.
    pub(crate) fn off(names: &[&str], name: &str) -> u32 {
        let mut o = 1;
        for n in names {
            if *n == name {
                return o;
            }
            o += n.len() as u32 + 1;
        }
        panic!("{name} not in names")
    }

    pub(crate) fn info(kind: u32, vlen: u32, flag: bool) -> u32 {
        (kind << 24) | vlen | (u32::from(flag) << 31)
    }

    pub(crate) const NAMES: &[&str] = &["int", "task", "pid", "flags", "next", "unsigned char"];

    /// int; struct task { int pid; unsigned char flags:3 (bit 35); struct task *next; };
    pub(crate) fn sample() -> Vec<u8> {
        let n = |s| off(NAMES, s);
        build(
            NAMES,
            &[
                (n("int"), info(1, 0, false), 4, vec![(1 << 24) | 32]), // 1
                (
                    n("task"),
                    info(4, 3, true),
                    16,
                    vec![
                        n("pid"),
                        1,
                        0,
                        n("flags"),
                        5,
                        (3 << 24) | 35,
                        n("next"),
                        3,
                        64,
                    ],
                ), // 2
                (0, info(2, 0, false), 2, vec![]),                      // 3: task *
                (0, info(10, 0, false), 2, vec![]),                     // 4: const task
                (n("unsigned char"), info(1, 0, false), 1, vec![8]),    // 5
            ],
        )
    }

    #[test]
    fn parses_structs_bitfields_and_pointers() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.len(), 6);
        let (id, Type::Struct { size, members, .. }) = btf.struct_named("task").unwrap() else {
            panic!("not a struct")
        };
        assert_eq!((id, *size), (2, 16));
        assert_eq!(members[1].name, "flags");
        assert_eq!((members[1].bit_offset, members[1].bitfield_size), (35, 3));
        assert_eq!(btf.get(3), Some(&Type::Ptr(2)));
        assert!(matches!(
            btf.get(1),
            Some(Type::Int {
                signed: true,
                bits: 32,
                ..
            })
        ));
    }

    #[test]
    fn hostile_blobs_are_errors_not_panics() {
        let good = sample();
        assert_eq!(Btf::parse(b"").unwrap_err(), BtfError::Truncated("header"));
        assert_eq!(
            Btf::parse(&[0x9f, 0xeb]).unwrap_err(),
            BtfError::Truncated("header")
        );
        assert!(matches!(
            Btf::parse(&[0xeb, 0x9f, 1, 0]),
            Err(BtfError::Magic(_))
        ));
        for cut in 0..good.len() {
            let _ = Btf::parse(&good[..cut]);
        }
        // A struct claiming 65535 members in a tiny section.
        let n = |s| off(NAMES, s);
        let huge = build(NAMES, &[(n("task"), info(4, 0xffff, false), 8, vec![])]);
        assert!(Btf::parse(&huge).is_err());
        let unknown = build(NAMES, &[(0, info(31, 0, false), 0, vec![])]);
        assert_eq!(
            Btf::parse(&unknown).unwrap_err(),
            BtfError::UnknownKind { id: 1, kind: 31 }
        );
        // Sections pointing past the end.
        let mut bad = good.clone();
        bad[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Btf::parse(&bad).is_err());
    }
}
