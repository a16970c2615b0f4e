// nats_client: the nats.go counterpart of examples/client_bench.rs, for comparing client
// libraries on the same machine in the same run (benches/client.sh runs both).
//
//	go run main.go -mode pub -url nats://127.0.0.1:4222
//	go run main.go -mode fanout -subs 8
//
// Prints one line of JSON in the same shape as client_bench.
package main

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

func main() {
	mode := flag.String("mode", "pub", "pub or fanout")
	url := flag.String("url", nats.DefaultURL, "server URL")
	subs := flag.Int("subs", 8, "subscribers (fanout)")
	size := flag.Int("size", 128, "payload bytes")
	duration := flag.Float64("duration", 5, "measured seconds")
	warmup := flag.Float64("warmup", 1, "seconds before measuring")
	flag.Parse()
	if (*mode != "pub" && *mode != "fanout") || *size < 8 {
		fmt.Fprintln(os.Stderr, "nats_client: -mode pub|fanout, -size at least 8")
		os.Exit(2)
	}
	subject := "bench.client"
	var delivered, published uint64
	var errs []string
	var errsMu sync.Mutex
	var conns []*nats.Conn
	if *mode == "fanout" {
		for i := 0; i < *subs; i++ {
			nc, err := nats.Connect(*url, nats.Name(fmt.Sprintf("sub%d", i)))
			if err != nil {
				fail(err)
			}
			expect := uint64(1)
			sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
				n := binary.BigEndian.Uint64(m.Data[:8])
				if n != expect {
					errsMu.Lock()
					if len(errs) < 8 {
						errs = append(errs, fmt.Sprintf("expected message %d, got %d", expect, n))
					}
					errsMu.Unlock()
				}
				expect = n + 1
				atomic.AddUint64(&delivered, 1)
			})
			if err != nil {
				fail(err)
			}
			// No client-side drops: a slow subscriber buffers, as msgc's pushes back.
			sub.SetPendingLimits(-1, -1)
			if err := nc.Flush(); err != nil {
				fail(err)
			}
			conns = append(conns, nc)
		}
	}
	pub, err := nats.Connect(*url, nats.Name("pub"))
	if err != nil {
		fail(err)
	}
	var stop int32
	done := make(chan struct{})
	go func() {
		payload := make([]byte, *size)
		seq := uint64(0)
		for atomic.LoadInt32(&stop) == 0 {
			for i := 0; i < 256; i++ {
				seq++
				binary.BigEndian.PutUint64(payload, seq)
				if err := pub.Publish(subject, payload); err != nil {
					fail(err)
				}
			}
			atomic.AddUint64(&published, 256)
		}
		pub.Flush()
		close(done)
	}()
	time.Sleep(time.Duration(*warmup * float64(time.Second)))
	p0, d0, t0 := atomic.LoadUint64(&published), atomic.LoadUint64(&delivered), time.Now()
	time.Sleep(time.Duration(*duration * float64(time.Second)))
	p1, d1, t1 := atomic.LoadUint64(&published), atomic.LoadUint64(&delivered), time.Now()
	atomic.StoreInt32(&stop, 1)
	<-done
	for _, nc := range conns {
		nc.Close()
	}
	secs := t1.Sub(t0).Seconds()
	errsMu.Lock()
	defer errsMu.Unlock()
	nsubs := 0
	if *mode == "fanout" {
		nsubs = *subs
	}
	out, _ := json.Marshal(map[string]interface{}{
		"client":               "nats.go",
		"mode":                 *mode,
		"api":                  "Publish",
		"subscribers":          nsubs,
		"size":                 *size,
		"duration_s":           secs,
		"published_msgs_per_s": float64(p1-p0) / secs,
		"delivered_msgs_per_s": float64(d1-d0) / secs,
		"errors":               errs,
	})
	fmt.Println(string(out))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "nats_client:", err)
	os.Exit(1)
}
