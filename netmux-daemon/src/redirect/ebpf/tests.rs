//! Unit tests of the eBPF backend (kept beside `ebpf.rs` so that file
//! stays under ~800 lines).

use super::*;

#[test]
fn redirect_can_move_between_threads() {
    fn send<T: Send>() {}
    send::<EbpfRedirect>();
}

#[test]
fn log_levels_match_aya_log_common() {
    assert_eq!(aya_log_level(LevelFilter::OFF), 0);
    assert_eq!(aya_log_level(LevelFilter::ERROR), 1);
    assert_eq!(aya_log_level(LevelFilter::TRACE), 5);
}

#[test]
fn stub_build_is_reported_or_object_is_elf() {
    if programs_built() {
        assert_eq!(&OBJECT[..4], b"\x7fELF");
    } else {
        let e = EbpfRedirect::load(Path::new("/nonexistent")).unwrap_err();
        assert!(matches!(e, EbpfError::StubBuild));
        assert!(e.to_string().contains("bpf-linker"));
    }
}

#[test]
fn missing_cgroup_is_named() {
    if !netmux_testbed::prereq::require(
        "redirect::ebpf::tests::missing_cgroup_is_named",
        (!programs_built()).then_some(BUILD),
    ) {
        return;
    }
    let e = EbpfRedirect::load(Path::new("/nonexistent/cgroup")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/cgroup"), "{e}");
}
