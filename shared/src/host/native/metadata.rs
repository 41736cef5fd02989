//! Envoy metadata for the proxy-wasm properties `metadata`, `xds.cluster_metadata` and
//! `xds.upstream_host_metadata`, which a Wasm filter gets as a serialized `envoy.config.core.v3.Metadata`. The ABI
//! reads metadata value by value (strings, numbers, bools and lists of them; a nested struct cannot be read), so
//! the same message is built here from what it gives: nested structs are left out.

#![allow(unsafe_code)] // calls into the ABI with local buffers

use std::ffi::c_void;

use super::ffi::{self, EnvoyBuffer, ModuleBuffer};

/// `envoy_dynamic_module_type_metadata_source`.
pub mod source {
    pub const DYNAMIC: u32 = 0;
    pub const CLUSTER: u32 = 2;
    pub const HOST: u32 = 3;
}

/// One value the ABI can read.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    String(Vec<u8>),
    Number(f64),
    Bool(bool),
    List(Vec<Scalar>),
}

/// A namespace's name and its fields.
pub type Namespace = (Vec<u8>, Vec<(Vec<u8>, Scalar)>);

/// The readable part of one metadata source, serialized as a `Metadata` message (`None`: nothing there).
pub fn read(api: &ffi::Api, filter: *mut c_void, source: u32) -> Option<Vec<u8>> {
    // SAFETY: `filter` is the stream's, alive during this hook.
    let count = unsafe { (api.metadata_namespaces_count)(filter, source) };
    if count == 0 {
        return None;
    }
    let mut names = vec![EnvoyBuffer::NULL; count];
    // SAFETY: room for the `count` names Envoy just reported.
    if !unsafe { (api.metadata_namespaces)(filter, source, names.as_mut_ptr()) } {
        return None;
    }
    let namespaces: Vec<Namespace> = names
        .into_iter()
        // SAFETY: Envoy's buffers, alive for this hook.
        .map(|name| unsafe { name.to_vec() })
        .map(|name| {
            let fields = fields(api, filter, source, &name);
            (name, fields)
        })
        .collect();
    Some(encode(&namespaces))
}

fn fields(api: &ffi::Api, filter: *mut c_void, source: u32, namespace: &[u8]) -> Vec<(Vec<u8>, Scalar)> {
    let ns = ModuleBuffer::of(namespace);
    // SAFETY: `filter` is the stream's; `ns` points into a live argument.
    let count = unsafe { (api.metadata_keys_count)(filter, source, ns) };
    let mut keys = vec![EnvoyBuffer::NULL; count];
    // SAFETY: room for the `count` keys Envoy just reported.
    if count == 0 || !unsafe { (api.metadata_keys)(filter, source, ns, keys.as_mut_ptr()) } {
        return Vec::new();
    }
    keys.into_iter()
        // SAFETY: Envoy's buffers, alive for this hook.
        .map(|key| unsafe { key.to_vec() })
        .filter_map(|key| value(api, filter, source, ns, &key).map(|value| (key, value)))
        .collect()
}

fn value(api: &ffi::Api, filter: *mut c_void, source: u32, ns: ModuleBuffer, key: &[u8]) -> Option<Scalar> {
    let key = ModuleBuffer::of(key);
    let (mut text, mut number, mut flag, mut size) = (EnvoyBuffer::NULL, 0f64, false, 0usize);
    // SAFETY (every call): `filter` is the stream's, the buffers point into live arguments, the out-pointers to
    // locals; the returned buffers are Envoy's, alive for this hook.
    unsafe {
        if (api.metadata_string)(filter, source, ns, key, &mut text) {
            return Some(Scalar::String(text.to_vec()));
        }
        if (api.metadata_number)(filter, source, ns, key, &mut number) {
            return Some(Scalar::Number(number));
        }
        if (api.metadata_bool)(filter, source, ns, key, &mut flag) {
            return Some(Scalar::Bool(flag));
        }
        if !(api.metadata_list_size)(filter, source, ns, key, &mut size) {
            return None;
        }
        let mut list = Vec::with_capacity(size);
        for index in 0..size {
            if (api.metadata_list_string)(filter, source, ns, key, index, &mut text) {
                list.push(Scalar::String(text.to_vec()));
            } else if (api.metadata_list_number)(filter, source, ns, key, index, &mut number) {
                list.push(Scalar::Number(number));
            } else if (api.metadata_list_bool)(filter, source, ns, key, index, &mut flag) {
                list.push(Scalar::Bool(flag));
            }
        }
        Some(Scalar::List(list))
    }
}

/// `Metadata { map<string, Struct> filter_metadata = 1 }`, `Struct { map<string, Value> fields = 1 }`.
pub fn encode(namespaces: &[Namespace]) -> Vec<u8> {
    let mut metadata = Vec::new();
    for (name, fields) in namespaces {
        let mut structure = Vec::new();
        for (key, value) in fields {
            let mut entry = Vec::new();
            bytes_field(&mut entry, 1, key);
            bytes_field(&mut entry, 2, &value_message(value));
            bytes_field(&mut structure, 1, &entry);
        }
        let mut entry = Vec::new();
        bytes_field(&mut entry, 1, name);
        bytes_field(&mut entry, 2, &structure);
        bytes_field(&mut metadata, 1, &entry);
    }
    metadata
}

/// `google.protobuf.Value`: number 2, string 3, bool 4, list 6 (`ListValue { repeated Value values = 1 }`).
fn value_message(value: &Scalar) -> Vec<u8> {
    let mut message = Vec::new();
    match value {
        Scalar::Number(number) => {
            varint(&mut message, (2 << 3) | 1);
            message.extend_from_slice(&number.to_le_bytes());
        }
        Scalar::String(text) => bytes_field(&mut message, 3, text),
        Scalar::Bool(flag) => {
            varint(&mut message, 4 << 3);
            varint(&mut message, u64::from(*flag));
        }
        Scalar::List(items) => {
            let mut list = Vec::new();
            for item in items {
                bytes_field(&mut list, 1, &value_message(item));
            }
            bytes_field(&mut message, 6, &list);
        }
    }
    message
}

fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_the_protobuf_message() {
        let fields = vec![(b"k".to_vec(), Scalar::String(b"v".to_vec())), (b"n".to_vec(), Scalar::Bool(true))];
        let bytes = encode(&[(b"ns".to_vec(), fields)]);
        let value_k = [0x1a, 1, b'v'];
        let entry_k = [&[0x0a, 1, b'k', 0x12, 3][..], &value_k].concat();
        let entry_n = [0x0a, 1, b'n', 0x12, 2, 0x20, 1];
        let structure = [&[0x0a, entry_k.len() as u8][..], &entry_k, &[0x0a, entry_n.len() as u8], &entry_n].concat();
        let entry = [&[0x0a, 2, b'n', b's', 0x12, structure.len() as u8][..], &structure].concat();
        assert_eq!(bytes, [&[0x0a, entry.len() as u8][..], &entry].concat());
    }

    #[test]
    fn numbers_are_doubles_and_lists_nest_values() {
        assert_eq!(value_message(&Scalar::Number(5.0)), [&[0x11][..], &5f64.to_le_bytes()].concat());
        let list = value_message(&Scalar::List(vec![Scalar::Bool(false)]));
        assert_eq!(list, [0x32, 4, 0x0a, 2, 0x20, 0]);
        let mut long = Vec::new();
        varint(&mut long, 300);
        assert_eq!(long, [0xac, 0x02]);
    }
}
