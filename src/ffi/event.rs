//! Events as C sees them: a `#[repr(C)]` record (`msgc_event` in `include/msgc.h`) at the
//! start of one heap allocation that also owns every buffer the record points into, so one
//! `msgc_event_free` releases all of it.
//!
//! Never hands out a pointer into memory it does not own; never panics on odd input (a name
//! with a NUL byte inside is kept whole, with its length beside it).

use std::os::raw::c_char;

use bytes::Bytes;

use crate::client::Event;

pub const EVENT_MESSAGE: i32 = 1;
pub const EVENT_VIEW: i32 = 2;
pub const EVENT_GAP: i32 = 3;
pub const EVENT_RECONNECTED: i32 = 4;
pub const EVENT_DISCONNECTED: i32 = 5;
pub const EVENT_ERROR: i32 = 6;

/// One member of a view (`msgc_member`).
#[repr(C)]
pub struct MsgcMember {
    pub session: u64,
    /// NUL-terminated UTF-8.
    pub name: *const c_char,
}

/// The C view of an event (`msgc_event`); field meanings are in `include/msgc.h`.
#[repr(C)]
pub struct MsgcEvent {
    pub kind: i32,
    pub cause: i32,
    pub gap_reason: i32,
    pub error_code: i32,
    pub group: *const c_char,
    pub group_len: usize,
    pub sender: u64,
    pub seq: u64,
    pub payload: *const u8,
    pub payload_len: usize,
    pub view_id: u64,
    pub members: *const MsgcMember,
    pub member_count: usize,
    pub first: u64,
    pub last: u64,
    pub session: u64,
    pub text: *const c_char,
}

/// The allocation behind a `msgc_event *`: the C record first (so the two pointers are the
/// same), then what its pointers point into.
#[repr(C)]
pub struct OwnedEvent {
    pub c: MsgcEvent,
    group: Box<[u8]>,
    text: Box<[u8]>,
    payload: Bytes,
    members: Vec<MsgcMember>,
    names: Vec<Box<[u8]>>,
}

// The raw pointers point into the same allocation's owned buffers, which move with it.
unsafe impl Send for OwnedEvent {}

/// `bytes` with a NUL appended, so C can read it as a string (its length stays known).
fn c_bytes(bytes: &[u8]) -> Box<[u8]> {
    let mut v = Vec::with_capacity(bytes.len() + 1);
    v.extend_from_slice(bytes);
    v.push(0);
    v.into_boxed_slice()
}

impl OwnedEvent {
    /// Converts an event; the result is boxed so the pointers it holds stay valid.
    pub fn new(event: Event) -> Box<OwnedEvent> {
        let mut e = Box::new(OwnedEvent {
            c: MsgcEvent {
                kind: 0,
                cause: 0,
                gap_reason: 0,
                error_code: 0,
                group: std::ptr::null(),
                group_len: 0,
                sender: 0,
                seq: 0,
                payload: std::ptr::null(),
                payload_len: 0,
                view_id: 0,
                members: std::ptr::null(),
                member_count: 0,
                first: 0,
                last: 0,
                session: 0,
                text: std::ptr::null(),
            },
            group: Box::new([]),
            text: Box::new([]),
            payload: Bytes::new(),
            members: Vec::new(),
            names: Vec::new(),
        });
        let group = |e: &mut OwnedEvent, g: &[u8]| {
            e.group = c_bytes(g);
            e.c.group = e.group.as_ptr().cast();
            e.c.group_len = g.len();
        };
        let text = |e: &mut OwnedEvent, t: &str| {
            e.text = c_bytes(t.as_bytes());
            e.c.text = e.text.as_ptr().cast();
        };
        match event {
            Event::Message { group: g, sender, seq, payload } => {
                e.c.kind = EVENT_MESSAGE;
                group(&mut e, g.as_bytes());
                e.c.sender = sender.0;
                e.c.seq = seq;
                e.payload = payload;
                e.c.payload = e.payload.as_ptr();
                e.c.payload_len = e.payload.len();
            }
            Event::View(v) => {
                e.c.kind = EVENT_VIEW;
                group(&mut e, v.group.as_bytes());
                e.c.cause = v.cause as i32;
                e.c.view_id = v.view_id;
                e.c.sender = v.subject.0;
                e.names = v.members.iter().map(|m| c_bytes(m.name.as_bytes())).collect();
                let members: Vec<MsgcMember> = v
                    .members
                    .iter()
                    .zip(&e.names)
                    .map(|(m, name)| MsgcMember { session: m.session.0, name: name.as_ptr().cast() })
                    .collect();
                e.members = members;
                e.c.members = e.members.as_ptr();
                e.c.member_count = e.members.len();
            }
            Event::Gap(gap) => {
                e.c.kind = EVENT_GAP;
                group(&mut e, gap.group.as_bytes());
                e.c.gap_reason = gap.reason as i32;
                e.c.sender = gap.sender.0;
                e.c.first = gap.first;
                e.c.last = gap.last;
            }
            Event::Reconnected { server, session } => {
                e.c.kind = EVENT_RECONNECTED;
                e.c.session = session.0;
                text(&mut e, &server);
            }
            Event::Disconnected { reason } => {
                e.c.kind = EVENT_DISCONNECTED;
                text(&mut e, &reason);
            }
            Event::Error { code, message } => {
                e.c.kind = EVENT_ERROR;
                e.c.error_code = code as i32;
                text(&mut e, &message);
            }
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Cause, GroupName, Member, Name, SessionId, View};

    unsafe fn str_at(p: *const c_char) -> String {
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    }

    #[test]
    fn a_view_is_laid_out_for_c_and_owns_its_strings() {
        let v = View {
            cause: Cause::Join,
            group: GroupName::new("g\u{0}x").unwrap(),
            view_id: 9,
            group_seq: 0,
            subject: SessionId(5),
            members: vec![
                Member { session: SessionId(5), name: Name::new("five").unwrap() },
                Member { session: SessionId(6), name: Name::new("").unwrap() },
            ],
        };
        let e = OwnedEvent::new(Event::View(v));
        // Moving the box does not move the buffers the record points into.
        let moved = e;
        unsafe {
            let c = &moved.c;
            assert_eq!((c.kind, c.cause, c.view_id, c.sender, c.member_count), (EVENT_VIEW, 1, 9, 5, 2));
            assert_eq!(c.group_len, 3, "a NUL inside a group name is kept, with the length beside it");
            assert_eq!(std::slice::from_raw_parts(c.group.cast::<u8>(), 4), b"g\0x\0");
            let members = std::slice::from_raw_parts(c.members, c.member_count);
            assert_eq!((members[0].session, str_at(members[0].name)), (5, "five".to_string()));
            assert_eq!((members[1].session, str_at(members[1].name)), (6, String::new()));
            assert!(c.payload.is_null() && c.text.is_null());
        }
    }

    #[test]
    fn a_message_shares_its_payload() {
        let payload = Bytes::from_static(b"hello");
        let e = OwnedEvent::new(Event::Message {
            group: GroupName::new("g").unwrap(),
            sender: SessionId(3),
            seq: 7,
            payload: payload.clone(),
        });
        assert_eq!(e.c.payload, payload.as_ptr(), "no copy of the payload");
        assert_eq!((e.c.kind, e.c.seq, e.c.sender, e.c.payload_len), (EVENT_MESSAGE, 7, 3, 5));
        unsafe { assert_eq!(str_at(e.c.group), "g") };
    }
}
