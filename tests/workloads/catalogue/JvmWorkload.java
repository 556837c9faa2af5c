// The Java side of the jvm workload (see jvm.py): run from source by the JRE's launcher
// (`java JvmWorkload.java`), it prints one line per check it made: "ok" or "error <why>".

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.atomic.AtomicLongArray;
import java.util.concurrent.locks.ReentrantReadWriteLock;
import java.util.zip.CRC32;

public final class JvmWorkload {
    static final int WORKERS = 8;
    static final int KEYS = 64;
    static final int BATCH = 50;

    static final ConcurrentHashMap<Integer, Long> counts = new ConcurrentHashMap<>();
    static final AtomicLongArray done = new AtomicLongArray(WORKERS);
    static final ReentrantReadWriteLock snapshot = new ReentrantReadWriteLock();
    static final LinkedBlockingQueue<long[]> messages = new LinkedBlockingQueue<>(1024);

    static synchronized void report(String line) {
        System.out.println(line);
        System.out.flush();
    }

    /** The checksum of message seq of worker w: what the consumer recomputes. */
    static long checksum(int worker, long seq) {
        CRC32 crc = new CRC32();
        crc.update(("w" + worker + ":" + seq + ":" + (seq * 2654435761L)).getBytes());
        return crc.getValue();
    }

    static void work(int worker) throws InterruptedException {
        long seq = 0;
        java.util.Random choose = new java.util.Random(worker);
        while (true) {
            int key = choose.nextInt(KEYS);
            snapshot.readLock().lock();
            try {
                counts.merge(key, 1L, Long::sum);
                done.incrementAndGet(worker);
            } finally {
                snapshot.readLock().unlock();
            }
            messages.put(new long[] {worker, seq, checksum(worker, seq)});
            seq++;
            Thread.sleep(1);
        }
    }

    static void consume() throws InterruptedException {
        long[] next = new long[WORKERS];
        int checked = 0;
        List<String> problems = new ArrayList<>();
        while (true) {
            long[] message = messages.take();
            int worker = (int) message[0];
            if (message[1] != next[worker]) {
                problems.add("worker " + worker + ": message " + message[1] + ", expected "
                        + next[worker]);
            } else if (message[2] != checksum(worker, message[1])) {
                problems.add("worker " + worker + ": message " + message[1] + " is corrupted");
            }
            next[worker] = message[1] + 1;
            if (++checked % BATCH == 0) {
                report(problems.isEmpty() ? "ok" : "error " + String.join("; ", problems));
                problems.clear();
            }
        }
    }

    static void check() throws InterruptedException {
        long[] before = new long[WORKERS];
        while (true) {
            Thread.sleep(20);
            long sum = 0;
            long total = 0;
            String problem = null;
            snapshot.writeLock().lock();
            try {
                for (long value : counts.values()) {
                    sum += value;
                }
                for (int w = 0; w < WORKERS; w++) {
                    long now = done.get(w);
                    if (now < before[w]) {
                        problem = "worker " + w + ": count went back from " + before[w] + " to " + now;
                    }
                    before[w] = now;
                    total += now;
                }
            } finally {
                snapshot.writeLock().unlock();
            }
            if (problem == null && sum != total) {
                problem = "the map's counts add up to " + sum + ", the workers did " + total;
            }
            report(problem == null ? "ok" : "error " + problem);
        }
    }

    interface Body {
        void run() throws InterruptedException;
    }

    static Thread start(String name, Body body) {
        Thread thread = new Thread(() -> {
            try {
                body.run();
            } catch (Throwable failure) {
                report("error thread " + name + " died: " + failure);
            }
        }, name);
        thread.setDaemon(true);
        thread.start();
        return thread;
    }

    public static void main(String[] args) throws InterruptedException {
        for (int w = 0; w < WORKERS; w++) {
            final int worker = w;
            start("worker-" + w, () -> work(worker));
        }
        start("consumer", JvmWorkload::consume);
        start("checker", JvmWorkload::check).join();
    }
}
