// fanoutcheck is an independent fan-out harness used to check msgc-bench's NATS and Redis
// drivers (benches/check-drivers.sh). It shares no code with msgc-bench: for NATS it uses
// the Go NATS client (Debian's golang-github-nats-io-go-nats-dev) for its publisher and
// subscribers; for Redis it only subscribes (a minimal RESP reader) while redis-benchmark
// publishes. Deliveries are counted by receive time over a window that starts after a
// warm-up, and one JSON line is printed on stdout.
//
// Build offline against Debian's packaged module sources:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o fanoutcheck benches/fanoutcheck/main.go
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
)

type result struct {
	System       string  `json:"system"`
	Subscribers  int     `json:"subscribers"`
	Size         int     `json:"size"`
	DurationS    float64 `json:"duration_s"`
	Published    float64 `json:"published_msgs_per_s"`
	Delivered    float64 `json:"delivered_msgs_per_s"`
	Disconnects  int64   `json:"disconnects"`
	SlowConsumer int64   `json:"slow_consumer_errors"`
	// This process's CPU over the window (100 = one core).
	CPUPercent float64 `json:"client_cpu_percent"`
}

var (
	system   = flag.String("system", "nats", "nats or redis")
	addr     = flag.String("addr", "127.0.0.1:4222", "server HOST:PORT")
	subs     = flag.Int("subs", 8, "subscribers")
	size     = flag.Int("size", 128, "payload bytes")
	duration = flag.Float64("duration", 5, "measured seconds")
	warmup   = flag.Float64("warmup", 1, "seconds before measuring")
	rate     = flag.Float64("rate", 0, "NATS: messages per second to publish; 0 = as fast as possible")
	gcPct    = flag.Int("gogc", 1000, "garbage collector target percentage (the NATS client allocates per message; a high value keeps collection from dominating)")
	subject  = flag.String("subject", "bench.g0", "subject or channel")
	setup    = flag.Duration("setup", 30*time.Second, "longest wait for subscriptions and first traffic")
)

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "fanoutcheck: "+format+"\n", a...)
	os.Exit(2)
}

func main() {
	flag.Parse()
	debug.SetGCPercent(*gcPct)
	if *subs < 1 || *size < 1 || *duration <= 0 || *warmup < 0 {
		fail("-subs and -size must be positive, -duration positive, -warmup not negative")
	}
	var r result
	switch *system {
	case "nats":
		r = runNats()
	case "redis":
		r = runRedis()
	default:
		fail("unknown -system %q (nats or redis)", *system)
	}
	r.System, r.Subscribers, r.Size, r.DurationS = *system, *subs, *size, *duration
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// window waits out the warm-up, then returns how far each counter moved over the measured
// duration, and this process's CPU percentage over it.
func window(counters ...*uint64) ([]uint64, float64) {
	time.Sleep(time.Duration(*warmup * float64(time.Second)))
	before := make([]uint64, len(counters))
	for i, c := range counters {
		before[i] = atomic.LoadUint64(c)
	}
	cpu := cpuSeconds()
	time.Sleep(time.Duration(*duration * float64(time.Second)))
	moved := make([]uint64, len(counters))
	for i, c := range counters {
		moved[i] = atomic.LoadUint64(c) - before[i]
	}
	return moved, (cpuSeconds() - cpu) / *duration * 100
}

func runNats() result {
	var delivered, published uint64
	var disconnects, slow int64
	var closing int32
	opts := []nats.Option{
		nats.NoReconnect(),
		nats.DisconnectErrHandler(func(_ *nats.Conn, _ error) {
			if atomic.LoadInt32(&closing) == 0 {
				atomic.AddInt64(&disconnects, 1)
			}
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if err == nats.ErrSlowConsumer {
				atomic.AddInt64(&slow, 1)
			}
		}),
	}
	url := "nats://" + *addr
	var conns []*nats.Conn
	for i := 0; i < *subs; i++ {
		nc, err := nats.Connect(url, opts...)
		if err != nil {
			fail("subscriber %d: %v", i, err)
		}
		sub, err := nc.Subscribe(*subject, func(_ *nats.Msg) { atomic.AddUint64(&delivered, 1) })
		if err != nil {
			fail("subscribe: %v", err)
		}
		// No client-side limit: a message dropped by the client would not be the server's doing.
		if err := sub.SetPendingLimits(-1, -1); err != nil {
			fail("pending limits: %v", err)
		}
		if err := nc.FlushTimeout(*setup); err != nil {
			fail("subscription not confirmed: %v", err)
		}
		conns = append(conns, nc)
	}
	pub, err := nats.Connect(url, opts...)
	if err != nil {
		fail("publisher: %v", err)
	}
	conns = append(conns, pub)
	var stop int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		payload := make([]byte, *size)
		began := time.Now()
		for atomic.LoadInt32(&stop) == 0 {
			n := 1000
			if *rate > 0 {
				// Paced: what is due by now, checked every millisecond.
				due := int(time.Since(began).Seconds() * *rate)
				n = due - int(atomic.LoadUint64(&published))
				if n <= 0 {
					if pub.Flush() != nil {
						return
					}
					time.Sleep(time.Millisecond)
					continue
				}
			}
			for k := 0; k < n; k++ {
				if pub.Publish(*subject, payload) != nil {
					return
				}
			}
			atomic.AddUint64(&published, uint64(n))
		}
	}()
	moved, cpu := window(&delivered, &published)
	atomic.StoreInt32(&stop, 1)
	<-done
	atomic.StoreInt32(&closing, 1)
	for _, nc := range conns {
		nc.Close()
	}
	return result{
		Published:    float64(moved[1]) / *duration,
		Delivered:    float64(moved[0]) / *duration,
		Disconnects:  atomic.LoadInt64(&disconnects),
		SlowConsumer: atomic.LoadInt64(&slow),
		CPUPercent:   cpu,
	}
}

// runRedis subscribes -subs connections, prints "ready" on stderr once every subscription
// is confirmed, waits for the first message (the publisher is started by the caller), and
// counts pushes by receive time.
func runRedis() result {
	var delivered uint64
	var disconnects int64
	var started int32
	first := make(chan struct{})
	for i := 0; i < *subs; i++ {
		c, err := net.Dial("tcp", *addr)
		if err != nil {
			fail("subscriber %d: %v", i, err)
		}
		fmt.Fprintf(c, "*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n", len(*subject), *subject)
		rd := bufio.NewReaderSize(c, 256*1024)
		c.SetReadDeadline(time.Now().Add(*setup))
		if kind, err := readPush(rd); err != nil || kind != "subscribe" {
			fail("subscription not confirmed: %q %v", kind, err)
		}
		c.SetReadDeadline(time.Time{})
		go func() {
			for {
				kind, err := readPush(rd)
				if err != nil {
					atomic.AddInt64(&disconnects, 1)
					return
				}
				if kind == message {
					atomic.AddUint64(&delivered, 1)
					if atomic.CompareAndSwapInt32(&started, 0, 1) {
						close(first)
					}
				}
			}
		}()
	}
	fmt.Fprintln(os.Stderr, "ready")
	select {
	case <-first:
	case <-time.After(*setup):
		fail("no message arrived within %v", *setup)
	}
	moved, cpu := window(&delivered)
	return result{Delivered: float64(moved[0]) / *duration, Disconnects: atomic.LoadInt64(&disconnects), CPUPercent: cpu}
}

const message = "message"

// readPush reads one RESP array of bulk strings or integers and returns its first element
// when it is short (a push kind); longer first elements are skipped.
func readPush(rd *bufio.Reader) (string, error) {
	line, err := rd.ReadSlice('\n')
	if err != nil {
		return "", err
	}
	if len(line) < 3 || line[0] != '*' {
		return "", fmt.Errorf("expected an array, got %q", line)
	}
	n, err := strconv.Atoi(string(line[1 : len(line)-2]))
	if err != nil {
		return "", err
	}
	var first string
	for i := 0; i < n; i++ {
		head, err := rd.ReadSlice('\n')
		if err != nil {
			return "", err
		}
		if len(head) < 3 {
			return "", fmt.Errorf("short element %q", head)
		}
		switch head[0] {
		case ':':
			continue
		case '$':
			size, err := strconv.Atoi(string(head[1 : len(head)-2]))
			if err != nil {
				return "", err
			}
			if i == 0 && size <= 16 {
				var b [18]byte
				if _, err := io.ReadFull(rd, b[:size+2]); err != nil {
					return "", err
				}
				first = string(b[:size])
			} else if _, err := rd.Discard(size + 2); err != nil {
				return "", err
			}
		default:
			return "", fmt.Errorf("unexpected element %q", head)
		}
	}
	return first, nil
}
