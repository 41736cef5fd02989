//! The proxy-wasm encoding of header maps: a `u32` count, then a `u32` name size and value size per pair, then
//! each name and value followed by a NUL byte. Little-endian. Used to pass headers to and from the host.

/// Encodes pairs for the host.
pub fn serialize(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let size: usize = 4 + pairs.iter().map(|(n, v)| 8 + n.len() + v.len() + 2).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&len32(pairs.len()).to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&len32(name.len()).to_le_bytes());
        out.extend_from_slice(&len32(value.len()).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

/// Decodes pairs from the host; `None` when the bytes are not a well-formed map (never a panic).
pub fn deserialize(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let read_u32 = |at: usize| -> Option<usize> {
        let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(raw)).ok()
    };
    let count = read_u32(0)?;
    let mut data = count.checked_mul(8)?.checked_add(4)?;
    let mut pairs = Vec::with_capacity(count.min(1024));
    for i in 0..count {
        let sizes = 4 + i * 8;
        let (name_size, value_size) = (read_u32(sizes)?, read_u32(sizes + 4)?);
        let name = bytes.get(data..data.checked_add(name_size)?)?;
        data = data.checked_add(name_size)?.checked_add(1)?;
        let value = bytes.get(data..data.checked_add(value_size)?)?;
        data = data.checked_add(value_size)?.checked_add(1)?;
        pairs.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
    }
    Some(pairs)
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let pairs: [(&str, &[u8]); 3] = [(":path", b"/a"), ("x-bin", b"\xff\x00\x01"), ("empty", b"")];
        let bytes = serialize(&pairs);
        assert_eq!(&bytes[..4], &3u32.to_le_bytes());
        let decoded = deserialize(&bytes).unwrap();
        assert_eq!(decoded.len(), 3);
        assert_eq!(decoded[1], ("x-bin".to_string(), vec![0xff, 0x00, 0x01]));
        assert_eq!(decoded[2], ("empty".to_string(), vec![]));
        assert_eq!(deserialize(&serialize(&[])).unwrap(), vec![]);
        assert_eq!(deserialize(b"").unwrap(), vec![]);
    }

    #[test]
    fn malformed_maps_are_refused_not_panicked_on() {
        let good = serialize(&[("a", b"b")]);
        // Every cut short of the last value's bytes is refused (its closing NUL is not needed).
        for cut in 0..good.len() - 1 {
            assert_eq!(deserialize(&good[..cut]).filter(|p| !p.is_empty()), None, "cut at {cut}");
        }
        assert_eq!(deserialize(&u32::MAX.to_le_bytes()), None);
        let mut huge_name = good.clone();
        huge_name[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(deserialize(&huge_name), None);
    }
}
