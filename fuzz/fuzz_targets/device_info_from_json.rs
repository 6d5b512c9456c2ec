//! `DeviceInfo::from_json` never panics; accepted device info round-trips
//! through `to_json`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_proto::message::DeviceInfo;

fuzz_target!(|data: &[u8]| {
    let Ok(info) = DeviceInfo::from_json(data) else {
        return;
    };
    let json = info.to_json();
    assert_eq!(
        DeviceInfo::from_json(&json).as_ref(),
        Ok(&info),
        "device info does not round-trip: {:?}",
        String::from_utf8_lossy(&json)
    );
});
