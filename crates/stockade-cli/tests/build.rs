//! Properties of the built binary itself.

/// `.cargo/config.toml` links stockade statically: every start skips the
/// dynamic loader (about half a millisecond per `stockade run`, see
/// benches/OPTIMISATIONS.md). A build that lost that setting would still
/// work, only slower; this catches it. Static-pie keeps ASLR: the binary
/// is still position-independent (`ET_DYN`).
#[test]
fn the_binary_is_static_and_position_independent() {
    let elf = std::fs::read(env!("CARGO_BIN_EXE_stockade")).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not a 64-bit ELF file");
    assert_eq!(elf[5], 1, "not little-endian");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    const ET_DYN: usize = 3;
    const PT_INTERP: u32 = 3;
    assert_eq!(u16_at(16), ET_DYN, "not position-independent (no ASLR)");
    let (phoff, phentsize, phnum) = (u64_at(32), u16_at(54), u16_at(56));
    let interp = (0..phnum).any(|i| u32_at(phoff + i * phentsize) == PT_INTERP);
    assert!(!interp, "the binary asks for a dynamic loader (PT_INTERP)");
}
