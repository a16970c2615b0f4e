//! Codec microbenchmarks: encoding and decoding MCAST frames of 64 B to 64 KiB, and the
//! server's per-frame header check.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use msgc::proto::{self, encode_mcast, GroupName, McastHeader, SessionId};

const SIZES: [usize; 6] = [64, 256, 1024, 4096, 16384, 65536];

fn codec(c: &mut Criterion) {
    let group = GroupName::new("bench.group").unwrap();
    let mut g = c.benchmark_group("mcast");
    for size in SIZES {
        let payload = vec![0xabu8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("encode", size), &payload, |b, p| {
            let mut buf = BytesMut::with_capacity(size + 64);
            b.iter(|| {
                buf.clear();
                encode_mcast(&mut buf, SessionId(7), 1, &group, p);
            })
        });
        let mut frame = BytesMut::new();
        encode_mcast(&mut frame, SessionId(7), 1, &group, &payload);
        let frame = frame.freeze();
        g.bench_with_input(BenchmarkId::new("decode", size), &frame, |b, f| {
            b.iter(|| {
                let mut buf = BytesMut::from(&f[..]);
                proto::decode(&mut buf, 1 << 20).unwrap().unwrap()
            })
        });
        g.bench_with_input(BenchmarkId::new("check_header", size), &frame, |b, f| {
            b.iter(|| McastHeader::parse(f).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
