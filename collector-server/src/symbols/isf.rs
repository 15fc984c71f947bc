//! A Volatility 3 symbol table (ISF, "intermediate symbol format" 6.x)
//! built from BTF types and kallsyms addresses.
//!
//! What Volatility reads (its `symbols/intermed.py` and the linux
//! stacker in `automagic/linux.py`):
//! - `base_types` by C name, plus `pointer` (the pointer size) and `void`;
//! - `user_types`: structs and unions with each field's byte `offset` and a
//!   type descriptor; a field marked `anonymous` has its members lifted
//!   into the parent, which is how C's anonymous structs/unions are
//!   written; bitfields carry a bit position inside the storage unit at
//!   `offset`;
//! - `enums` with the base type of their size;
//! - `symbols`: address, and a type where a plugin reads the symbol as an
//!   object (`init_task`, `modules`); `linux_banner`'s `constant_data` is
//!   the banner Volatility scans memory for to pick this table.
//!
//! Addresses are the running ones from kallsyms: the stacker derives both
//! KASLR shifts from `init_task` and `init_files` in the image, so a table
//! of running addresses simply yields a virtual shift of zero.
//!
//! BTF has no typedef level in ISF: typedefs and qualifiers are looked
//! through, and an anonymous struct known only by a typedef takes the
//! typedef's name (`atomic_t`, `spinlock_t`). Kernel globals have no type in
//! BTF (only per-CPU variables do), so the symbols plugins read as objects
//! get theirs from [`TYPED_SYMBOLS`]. References are followed to a bounded
//! depth: a hostile BTF whose typedef names itself becomes `void`.

use std::collections::{BTreeMap, HashMap, HashSet};

use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::btf::{Btf, Member, Type};
use super::kallsyms::Symbol;

/// ISF format version written.
pub const FORMAT: &str = "6.2.0";
/// Deepest chain of typedefs, qualifiers, arrays and pointers followed.
const MAX_DEPTH: u32 = 48;
/// Bytes of a pointer on the 64-bit kernels ircap runs on.
const POINTER_SIZE: u32 = 8;

/// Kernel globals Volatility's Linux plugins read as objects (found with
/// `grep object_from_symbol` over its `symbols/linux` and `plugins/linux`)
/// and their C types: a struct or base type name, `*name` a pointer to
/// one, `[]name` an array of structs whose length is the gap to the next
/// symbol.
pub const TYPED_SYMBOLS: &[(&str, &str)] = &[
    ("init_task", "task_struct"),
    ("init_files", "files_struct"),
    ("init_mm", "mm_struct"),
    ("init_fs", "fs_struct"),
    ("init_nsproxy", "nsproxy"),
    ("init_pid_ns", "pid_namespace"),
    ("init_uts_ns", "uts_namespace"),
    ("init_net", "net"),
    ("init_cred", "cred"),
    ("modules", "list_head"),
    ("mod_tree", "mod_tree_root"),
    ("module_kset", "*kset"),
    ("module_addr_min", "long unsigned int"),
    ("module_addr_max", "long unsigned int"),
    ("taint_flags", "[]taint_flag"),
    ("net_namespace_list", "list_head"),
    ("tty_drivers", "list_head"),
    ("bpf_kallsyms", "list_head"),
    ("prog_idr", "idr"),
    ("prb", "*printk_ringbuffer"),
    ("log_buf", "*char"),
    ("log_buf_len", "unsigned int"),
    ("cap_last_cap", "int"),
    ("vmemmap_base", "long unsigned int"),
    ("mem_map", "*page"),
    ("keyboard_notifier_list", "atomic_notifier_head"),
    ("idt_table", "[]gate_struct"),
    ("ftrace_ops_list", "*ftrace_ops"),
    ("ftrace_list_end", "ftrace_ops"),
    ("socket_file_ops", "file_operations"),
    ("sockfs_dentry_operations", "dentry_operations"),
    ("num_registered_fb", "int"),
    ("_text", "char"),
    ("_etext", "char"),
    ("_stext", "char"),
];

/// Longest array [`TYPED_SYMBOLS`] sizes from a symbol gap.
const MAX_GAP_COUNT: u64 = 1 << 16;

/// What went into a table, for the command's summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Base types.
    pub base_types: usize,
    /// Structs and unions.
    pub user_types: usize,
    /// Enums.
    pub enums: usize,
    /// Symbols.
    pub symbols: usize,
    /// Symbols given a type.
    pub typed_symbols: usize,
}

/// Names given to structs, unions and enums.
struct Names {
    by_id: HashMap<u32, String>,
}

impl Names {
    fn new(btf: &Btf) -> Self {
        let mut taken: HashSet<String> = HashSet::new();
        let mut by_id = HashMap::new();
        for (id, ty) in btf.iter() {
            if let Type::Struct { name, .. } | Type::Enum { name, .. } = ty
                && !name.is_empty()
            {
                taken.insert(name.clone());
                by_id.insert(id, name.clone());
            }
        }
        // An anonymous aggregate named by a typedef takes that name.
        for (_, ty) in btf.iter() {
            if let Type::Typedef { name, type_id } = ty
                && !name.is_empty()
                && !by_id.contains_key(type_id)
                && matches!(
                    btf.get(*type_id),
                    Some(Type::Struct { .. } | Type::Enum { .. })
                )
                && taken.insert(name.clone())
            {
                by_id.insert(*type_id, name.clone());
            }
        }
        for (id, ty) in btf.iter() {
            if matches!(ty, Type::Struct { .. } | Type::Enum { .. }) {
                by_id.entry(id).or_insert_with(|| format!("unnamed_{id}"));
            }
        }
        Self { by_id }
    }

    fn of(&self, id: u32) -> String {
        self.by_id
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("unnamed_{id}"))
    }
}

/// Builds the table.
#[must_use]
pub fn build(
    btf: &Btf,
    symbols: &[Symbol],
    banner: &[u8],
    producer_version: &str,
    kallsyms_sha256: &str,
) -> (Value, Counts) {
    let names = Names::new(btf);
    let writer = Writer { btf, names: &names };

    let mut base_types = Map::new();
    base_types.insert("pointer".into(), base("int", POINTER_SIZE, false));
    base_types.insert("void".into(), base("void", 0, false));
    for (_, ty) in btf.iter() {
        match ty {
            Type::Int {
                name,
                size,
                signed,
                boolean,
                ..
            } if !name.is_empty() => {
                let kind = if *boolean {
                    "bool"
                } else if name.contains("char") {
                    "char"
                } else {
                    "int"
                };
                base_types
                    .entry(name.clone())
                    .or_insert_with(|| base(kind, *size, *signed));
            }
            Type::Float { name, size } if !name.is_empty() => {
                base_types
                    .entry(name.clone())
                    .or_insert_with(|| base("float", *size, true));
            }
            _ => {}
        }
    }
    for (size, signed) in [1, 2, 4, 8]
        .into_iter()
        .flat_map(|s| [(s, true), (s, false)])
    {
        base_types
            .entry(int_name(size, signed).to_owned())
            .or_insert_with(|| base("int", size, signed));
    }

    let mut user_types = Map::new();
    let mut enums = Map::new();
    for (id, ty) in btf.iter() {
        match ty {
            Type::Struct {
                size,
                union,
                members,
                ..
            } => {
                let name = names.of(id);
                if user_types.contains_key(&name) {
                    continue;
                }
                user_types.insert(
                    name,
                    json!({
                        "kind": if *union { "union" } else { "struct" },
                        "size": size,
                        "fields": writer.fields(members),
                    }),
                );
            }
            Type::Enum {
                size,
                signed,
                values,
                ..
            } => {
                let name = names.of(id);
                if enums.contains_key(&name) {
                    continue;
                }
                let constants: Map<String, Value> =
                    values.iter().map(|(n, v)| (n.clone(), json!(v))).collect();
                enums.insert(
                    name,
                    json!({"size": size, "base": int_name(*size, *signed), "constants": constants}),
                );
            }
            _ => {}
        }
    }
    // Structs only ever declared: an empty layout, so a pointer to one
    // still resolves.
    for (_, ty) in btf.iter() {
        if let Type::Fwd { name, union } = ty
            && !name.is_empty()
            && !user_types.contains_key(name)
        {
            user_types.insert(
                name.clone(),
                json!({"kind": if *union { "union" } else { "struct" }, "size": 0, "fields": {}}),
            );
        }
    }

    // Symbol types: BTF variables first, then the table above.
    let mut sym_types: HashMap<String, Value> = HashMap::new();
    for (_, ty) in btf.iter() {
        if let Type::Var { name, type_id } = ty {
            sym_types.insert(name.clone(), writer.desc(*type_id, 0));
        }
    }
    let mut by_address: Vec<u64> = symbols.iter().map(|s| s.address).collect();
    by_address.sort_unstable();
    let gap_after = |addr: u64| {
        let i = by_address.partition_point(|&a| a <= addr);
        by_address.get(i).map(|next| next - addr)
    };
    let named = |name: &str| -> Option<Value> {
        if user_types.contains_key(name) {
            Some(json!({"kind": "struct", "name": name}))
        } else if base_types.contains_key(name) {
            Some(json!({"kind": "base", "name": name}))
        } else {
            None
        }
    };
    for (sym, ty) in TYPED_SYMBOLS {
        let desc = if let Some(target) = ty.strip_prefix('*') {
            named(target).map(|t| json!({"kind": "pointer", "subtype": t}))
        } else if let Some(elem) = ty.strip_prefix("[]") {
            let size = user_types
                .get(elem)
                .and_then(|t| t["size"].as_u64())
                .filter(|&s| s > 0);
            let address = symbols.iter().find(|s| s.name == *sym).map(|s| s.address);
            match (size, address.and_then(gap_after)) {
                (Some(size), Some(gap)) if gap / size > 0 => Some(json!({
                    "kind": "array",
                    "count": (gap / size).min(MAX_GAP_COUNT),
                    "subtype": {"kind": "struct", "name": elem},
                })),
                _ => None,
            }
        } else {
            named(ty)
        };
        if let Some(desc) = desc {
            sym_types.insert((*sym).to_owned(), desc);
        }
    }
    let mut out_symbols = Map::new();
    let mut typed = 0usize;
    for s in symbols {
        if out_symbols.contains_key(&s.name) {
            continue;
        }
        let mut entry = Map::new();
        entry.insert("address".into(), json!(s.address));
        if s.name == "linux_banner" && !banner.is_empty() {
            entry.insert(
                "constant_data".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(banner)),
            );
            entry.insert(
                "type".into(),
                json!({"kind": "array", "count": banner.len() + 1, "subtype": {"kind": "base", "name": "char"}}),
            );
            typed += 1;
        } else if let Some(t) = sym_types.get(&s.name) {
            entry.insert("type".into(), t.clone());
            typed += 1;
        }
        out_symbols.insert(s.name.clone(), Value::Object(entry));
    }

    let counts = Counts {
        base_types: base_types.len(),
        user_types: user_types.len(),
        enums: enums.len(),
        symbols: out_symbols.len(),
        typed_symbols: typed,
    };
    let isf = json!({
        "metadata": {
            "format": FORMAT,
            "producer": {"name": "ircap-collector symbols (BTF + kallsyms)", "version": producer_version},
            "linux": {"symbols": [{
                "kind": "system-map",
                "name": "kallsyms",
                "hash_type": "sha256",
                "hash_value": kallsyms_sha256,
            }]},
        },
        "base_types": base_types,
        "user_types": user_types,
        "enums": enums,
        "symbols": out_symbols,
    });
    (isf, counts)
}

fn base(kind: &str, size: u32, signed: bool) -> Value {
    json!({"kind": kind, "size": size, "signed": signed, "endian": "little"})
}

/// The C name of the integer of `size` bytes (an enum's base).
fn int_name(size: u32, signed: bool) -> &'static str {
    match (size, signed) {
        (1, true) => "signed char",
        (1, false) => "unsigned char",
        (2, true) => "short int",
        (2, false) => "short unsigned int",
        (8, true) => "long int",
        (8, false) => "long unsigned int",
        (_, true) => "int",
        (_, false) => "unsigned int",
    }
}

struct Writer<'a> {
    btf: &'a Btf,
    names: &'a Names,
}

impl Writer<'_> {
    /// Looks through typedefs and qualifiers.
    fn strip(&self, mut id: u32) -> u32 {
        for _ in 0..MAX_DEPTH {
            match self.btf.get(id) {
                Some(Type::Typedef { type_id, .. } | Type::Modifier(type_id)) => id = *type_id,
                _ => return id,
            }
        }
        0
    }

    /// The ISF type descriptor of type `id`.
    fn desc(&self, id: u32, depth: u32) -> Value {
        let void = || json!({"kind": "base", "name": "void"});
        if depth > MAX_DEPTH {
            return void();
        }
        let id = self.strip(id);
        match self.btf.get(id) {
            Some(Type::Int { name, .. } | Type::Float { name, .. }) if !name.is_empty() => {
                json!({"kind": "base", "name": name})
            }
            Some(Type::Ptr(target)) => {
                let target = self.strip(*target);
                if matches!(
                    self.btf.get(target),
                    Some(Type::FuncProto | Type::Func { .. })
                ) {
                    json!({"kind": "pointer", "subtype": {"kind": "function"}})
                } else {
                    json!({"kind": "pointer", "subtype": self.desc(target, depth + 1)})
                }
            }
            Some(Type::Array { elem, count }) => {
                json!({"kind": "array", "count": count, "subtype": self.desc(*elem, depth + 1)})
            }
            Some(Type::Struct { union, .. }) => {
                json!({"kind": if *union { "union" } else { "struct" }, "name": self.names.of(id)})
            }
            Some(Type::Enum { .. }) => json!({"kind": "enum", "name": self.names.of(id)}),
            Some(Type::Fwd { name, union }) if !name.is_empty() => {
                json!({"kind": if *union { "union" } else { "struct" }, "name": name})
            }
            Some(Type::FuncProto | Type::Func { .. }) => json!({"kind": "function"}),
            _ => void(),
        }
    }

    /// The `fields` object of a struct or union.
    fn fields(&self, members: &[Member]) -> Map<String, Value> {
        let mut fields = Map::new();
        for (i, m) in members.iter().enumerate() {
            let target = self.strip(m.type_id);
            let ty = self.btf.get(target);
            if m.name.is_empty() {
                if matches!(ty, Some(Type::Struct { .. })) {
                    fields.insert(
                        format!("unnamed_field_{i}"),
                        json!({"type": self.desc(target, 0), "offset": m.bit_offset / 8, "anonymous": true}),
                    );
                }
                continue;
            }
            let (storage_size, width, extra_offset) = match ty {
                Some(Type::Int {
                    size, offset, bits, ..
                }) => {
                    let width = if m.bitfield_size > 0 {
                        m.bitfield_size
                    } else if *bits < size.saturating_mul(8) || *offset != 0 {
                        *bits
                    } else {
                        0
                    };
                    (*size, width, if m.bitfield_size > 0 { 0 } else { *offset })
                }
                Some(Type::Enum { size, .. }) => (*size, m.bitfield_size, 0),
                _ => (0, 0, 0),
            };
            let value = if width > 0 && storage_size > 0 {
                let bit = m.bit_offset.saturating_add(extra_offset);
                let unit_bits = storage_size.saturating_mul(8);
                let byte = bit / unit_bits * storage_size;
                json!({
                    "type": {
                        "kind": "bitfield",
                        "bit_position": bit - byte * 8,
                        "bit_length": width,
                        "type": self.desc(target, 0),
                    },
                    "offset": byte,
                })
            } else {
                json!({"type": self.desc(m.type_id, 0), "offset": m.bit_offset / 8})
            };
            fields.insert(m.name.clone(), value);
        }
        fields
    }
}

/// The symbol table's summary line for humans and tests.
#[must_use]
pub fn describe(counts: &Counts) -> BTreeMap<&'static str, usize> {
    BTreeMap::from([
        ("base_types", counts.base_types),
        ("user_types", counts.user_types),
        ("enums", counts.enums),
        ("symbols", counts.symbols),
        ("typed_symbols", counts.typed_symbols),
    ])
}

#[cfg(test)]
mod tests {
    use super::super::btf::tests::{NAMES, build as btf_build, info, off, sample};
    use super::*;

    #[test]
    fn struct_fields_bitfields_pointers_and_symbols() {
        let btf = Btf::parse(&sample()).unwrap();
        let symbols = vec![
            Symbol {
                address: 0xffff_ffff_8100_0000,
                kind: 'T',
                name: "_text".into(),
            },
            Symbol {
                address: 0xffff_ffff_8200_0000,
                kind: 'D',
                name: "linux_banner".into(),
            },
        ];
        let (isf, counts) = build(&btf, &symbols, b"Linux version 6.1\n", "0", "ab");
        let task = &isf["user_types"]["task"];
        assert_eq!(task["size"], 16);
        assert_eq!(task["fields"]["pid"]["offset"], 0);
        assert_eq!(
            task["fields"]["pid"]["type"],
            json!({"kind": "base", "name": "int"})
        );
        // 3 bits at bit 35 of an unsigned char unit: byte 4, bit 3.
        assert_eq!(
            task["fields"]["flags"],
            json!({"offset": 4, "type": {"kind": "bitfield", "bit_position": 3, "bit_length": 3,
                   "type": {"kind": "base", "name": "unsigned char"}}})
        );
        assert_eq!(
            task["fields"]["next"],
            json!({"offset": 8, "type": {"kind": "pointer", "subtype": {"kind": "struct", "name": "task"}}})
        );
        assert_eq!(isf["base_types"]["pointer"]["size"], 8);
        assert_eq!(isf["symbols"]["_text"]["address"], 0xffff_ffff_8100_0000u64);
        assert_eq!(
            isf["symbols"]["linux_banner"]["constant_data"],
            "TGludXggdmVyc2lvbiA2LjEK"
        );
        assert_eq!(counts.symbols, 2);
    }

    #[test]
    fn self_referencing_typedef_becomes_void() {
        let n = |s| off(NAMES, s);
        // 1: typedef pid pid; 2: struct task { pid pid; }
        let data = btf_build(
            NAMES,
            &[
                (n("pid"), info(8, 0, false), 1, vec![]),
                (n("task"), info(4, 1, false), 4, vec![n("pid"), 1, 0]),
            ],
        );
        let btf = Btf::parse(&data).unwrap();
        let (isf, _) = build(&btf, &[], b"", "0", "");
        assert_eq!(
            isf["user_types"]["task"]["fields"]["pid"]["type"],
            json!({"kind": "base", "name": "void"})
        );
    }
}

/// The agent's BTF and kallsyms are the attacker's bytes: whatever they
/// hold, parsing and building a table ends, without a panic, in a table
/// or an error.
#[cfg(test)]
mod hostile_input {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::super::btf::tests::sample;
    use super::super::kallsyms;
    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Random bytes: an error or (rarely) a table, never a panic.
        #[test]
        fn any_bytes_as_btf_and_kallsyms(
            btf in proptest::collection::vec(any::<u8>(), 0..256),
            text in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let symbols = kallsyms::parse(&text);
            if let Ok(btf) = Btf::parse(&btf) {
                let (isf, _) = build(&btf, &symbols, &text, "0", "");
                prop_assert!(serde_json::to_vec(&isf).is_ok());
            }
        }

        /// A valid header over random type records (random kinds, member
        /// counts, type ids and name offsets).
        #[test]
        fn random_type_records(words in proptest::collection::vec(any::<u32>(), 0..64)) {
            let mut records = Vec::new();
            for w in words.chunks(4) {
                let get = |i: usize| w.get(i).copied().unwrap_or(0);
                let kind = get(1) % 20;
                let vlen = get(1) >> 20 & 0x7;
                records.push((get(0) % 64, (kind << 24) | vlen, get(2) % 16, vec![get(3) % 16; 3 * vlen as usize]));
            }
            let data = super::super::btf::tests::build(super::super::btf::tests::NAMES, &records);
            if let Ok(btf) = Btf::parse(&data) {
                let (isf, _) = build(&btf, &[], b"", "0", "");
                prop_assert!(serde_json::to_vec(&isf).is_ok());
            }
        }

        /// A valid blob with bytes overwritten anywhere (lengths, offsets,
        /// kinds, member counts, type ids): the same.
        #[test]
        fn corrupted_btf(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let mut data = sample();
            for (at, byte) in flips {
                let i = at.index(data.len());
                data[i] = byte;
            }
            if let Ok(btf) = Btf::parse(&data) {
                let symbols = kallsyms::parse(b"ffffffff81000000 T _text\nffffffff82000000 D init_task\n");
                let (isf, _) = build(&btf, &symbols, b"Linux version 6.1\n", "0", "");
                prop_assert!(serde_json::to_vec(&isf).is_ok());
            }
        }
    }
}
