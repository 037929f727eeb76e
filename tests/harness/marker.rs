//! The marker boot sector: 512 bytes of real-mode code that print a marker line to COM1 and
//! then make QEMU exit with status 33 through `isa-debug-exit`.
//!
//! iPXE runs a raw 512-byte image as a PXE program at 0:7C00, so `chain markers/x.bin` ends a
//! network boot with proof of *which* file booted: the marker on the serial console, and an
//! exit status no failed boot produces (a failed boot with `-no-reboot` exits 0).

/// Every marker line starts with this, so a test can list all markers a console shows.
pub const MARKER_PREFIX: &str = "PXESRV-E2E-BOOTED:";

/// QEMU's exit status when the marker sector ran: isa-debug-exit exits with `(value << 1) | 1`
/// and the sector writes 0x10.
pub const MARKER_EXIT: i32 = 33;

/// The marker line a sector built by [`sector`] for `name` prints.
pub fn marker(name: &str) -> String {
    format!("{MARKER_PREFIX}{name}")
}

/// Offset of the message inside the sector: the length of the code below.
const MSG_OFF: u16 = 0x1B;

/// A 512-byte boot sector printing `\r\n{marker(name)}\r\n` on COM1, then exiting QEMU.
pub fn sector(name: &str) -> Vec<u8> {
    let msg_addr = (0x7C00 + MSG_OFF).to_le_bytes();
    #[rustfmt::skip]
    let code: [u8; MSG_OFF as usize] = [
        0xFA,                           // 00 cli
        0x31, 0xC0,                     // 01 xor ax,ax
        0x8E, 0xD8,                     // 03 mov ds,ax
        0xFC,                           // 05 cld
        0xBE, msg_addr[0], msg_addr[1], // 06 mov si,msg
        0xBA, 0xF8, 0x03,               // 09 mov dx,0x3F8 (COM1 data register)
        0xAC,                           // 0C next: lodsb
        0x84, 0xC0,                     // 0D test al,al
        0x74, 0x03,                     // 0F jz done
        0xEE,                           // 11 out dx,al
        0xEB, 0xF8,                     // 12 jmp next
        0xB0, 0x10,                     // 14 done: mov al,0x10
        0xE6, 0xF4,                     // 16 out 0xF4,al (isa-debug-exit: QEMU exits 33)
        0xF4,                           // 18 hlt
        0xEB, 0xFD,                     // 19 jmp hlt
    ];
    let mut out = code.to_vec();
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(marker(name).as_bytes());
    out.extend_from_slice(b"\r\n\0");
    assert!(
        out.len() <= 446,
        "marker {name:?} too long for a boot sector"
    );
    out.resize(510, 0);
    out.extend_from_slice(&[0x55, 0xAA]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sector_is_a_boot_sector_with_the_marker() {
        let s = sector("abc");
        assert_eq!(s.len(), 512);
        assert_eq!(&s[510..], &[0x55, 0xAA]);
        let msg = &s[MSG_OFF as usize..];
        assert!(msg.starts_with(b"\r\nPXESRV-E2E-BOOTED:abc\r\n\0"));
    }
}
