//! Router microbenchmark: one multicast routed by a shard to a group of 1 to 10 000 local
//! members (the fan-out lookup and queueing, without sockets).

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use msgc::core::{Limits, ServerIdentity, ShardCore, Take};
use msgc::proto::{encode_mcast, Frame, GroupName, Handshake, Name, NodeTag};

fn hello() -> Bytes {
    Frame::Hello(Handshake::client(Name::new("m").unwrap(), 1 << 20)).to_bytes()
}

fn router(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    for members in [1usize, 10, 100, 1000, 10_000] {
        let now = Instant::now();
        let identity = ServerIdentity {
            node_tag: NodeTag(1),
            node_name: Name::new("b").unwrap(),
            digest: 0,
            boot: 1,
            entropy: [0; 32],
        };
        let limits =
            Limits { max_backlog: usize::MAX / 2, memory_budget: usize::MAX / 2, ..Limits::default() };
        let mut core = ShardCore::new(0, 1, identity, limits);
        let group = GroupName::new("g").unwrap();
        let mut conns = Vec::new();
        for _ in 0..members {
            let c = core.handle_accept(now, Default::default());
            core.handle_input(c, &mut BytesMut::from(&hello()[..]), now);
            core.handle_input(c, &mut BytesMut::from(&Frame::Join(group.clone()).to_bytes()[..]), now);
            conns.push(c);
        }
        let publisher = core.handle_accept(now, Default::default());
        core.handle_input(publisher, &mut BytesMut::from(&hello()[..]), now);
        let sender = core.session_of(publisher).unwrap();
        let mut batch = Vec::new();
        let mut drain = |core: &mut ShardCore| {
            for &c in &conns {
                while core.take_batch(c, &mut batch, now) == Take::Write {
                    batch.clear();
                }
            }
        };
        drain(&mut core);
        let mut seq = 0u64;
        g.throughput(Throughput::Elements(members as u64));
        g.bench_function(BenchmarkId::from_parameter(members), |b| {
            b.iter(|| {
                seq += 1;
                let mut buf = BytesMut::new();
                encode_mcast(&mut buf, sender, seq, &group, &[0u8; 128]);
                core.handle_input(publisher, &mut buf, now);
                drain(&mut core);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, router);
criterion_main!(benches);
