"""DSALT landmark selection (stable slots). Design: ``kernel.py``'s docstring, which launches it."""

from __future__ import annotations

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover
    HAVE_TRITON = False

if HAVE_TRITON:

    @triton.jit
    def _keys_tile(E, pos, ok, KEY32: tl.constexpr):
        """Rank keys (reference.rank_keys) of the energies at ``pos``; the smallest key where not ok.
        KEY32 (T <= 65536): the float16 bits and 16 position bits in an int32, else an int64."""
        e = tl.load(E + pos, mask=ok, other=0.0).to(tl.float32)
        e16 = tl.minimum(tl.maximum(e, -6e4), 6e4).to(tl.float16)
        if KEY32:
            bits = e16.to(tl.int16, bitcast=True).to(tl.int32)
            bits = tl.where(bits == -32768, 0, bits)  # -0 -> +0
            mono = tl.where(bits >= 0, bits, bits ^ 32767)
            key = mono * 65536 + (65535 - pos)
            key = tl.where(ok, key, -2147483648)
        else:
            bits = (e16.to(tl.float32) + 0.0).to(tl.int32, bitcast=True)
            mono = tl.where(bits >= 0, bits, bits ^ 2147483647).to(tl.int64)
            key = mono * 4294967296 + (4294967295 - pos.to(tl.int64))
            key = tl.where(ok, key, -9223372036854775808)
        return key

    @triton.jit
    def _insert_seq(cur, cand, offs_k, offs_s, kmin_s):
        """Candidates inserted best first, each replacing the set's minimum (the smallest slot
        among equal minima): a token keeps its slot from insertion to eviction. Returns the set
        and its minimum."""
        # two independent value+index reductions per insertion (was argmin, min and max)
        m, am = tl.min(cur, 0, return_indices=True)
        best, bj = tl.max(cand, 0, return_indices=True)
        while best > m:
            cur = tl.where(offs_k == am, best, cur)
            cand = tl.where(offs_s == bj, kmin_s, cand)
            m, am = tl.min(cur, 0, return_indices=True)
            best, bj = tl.max(cand, 0, return_indices=True)
        return cur, m

    @triton.jit
    def _select_kernel(E, LPOS, T, NB, S, K: tl.constexpr, KP: tl.constexpr, BS: tl.constexpr,
                       CB: tl.constexpr, KEY32: tl.constexpr):
        """Causal landmark sets with stable slots, one program per (batch, kv head); see the module
        docstring. Candidate blocks are read CB at a time (row r of a chunk: block c0 + r, whose
        output row is the set of block c0 + r + 1, the set after that block's tokens were offered).
        The rank keys are computed here from the energies (int32 keys when T <= 65536: cheaper
        reductions)."""
        pid = tl.program_id(0)
        bhi = NB - 1
        offs_k = tl.arange(0, KP)
        offs_s = tl.arange(0, BS)
        rows = tl.arange(0, CB)
        if KEY32:
            kmin = tl.full([KP], -2147483648, tl.int32)
            kpad = tl.full([KP], 2147483647, tl.int32)  # padding: never the min
            pm = tl.full([KP], 65535, tl.int32)
            none = tl.full([KP], -1, tl.int32)
        else:
            kmin = tl.full([KP], -9223372036854775808, tl.int64)
            kpad = tl.full([KP], 9223372036854775807, tl.int64)
            pm = tl.full([KP], 4294967295, tl.int64)
            none = tl.full([KP], -1, tl.int64)
        cur = tl.where(offs_k < K, kmin, kpad)
        # block 0: the empty set
        tl.store(LPOS + pid * NB * KP + offs_k, tl.full([KP], -1, tl.int32))
        ebase = E + pid * T
        # prefetched chunk of candidate keys [CB, BS]
        pos = rows[:, None] * S + offs_s[None, :]
        ck = _keys_tile(ebase, pos, (offs_s[None, :] < S) & (pos < T) & (rows[:, None] < bhi), KEY32)
        for c0 in range(0, bhi, CB):
            blk_n = c0 + CB + rows
            pos_n = blk_n[:, None] * S + offs_s[None, :]
            ck_n = _keys_tile(ebase, pos_n, (offs_s[None, :] < S) & (pos_n < T) & (blk_n[:, None] < bhi), KEY32)
            bmax = tl.max(ck, 1)  # [CB] best key of each candidate block
            out_rows = (c0 + rows + 1) * KP  # [CB] output set offsets (block c0 + r + 1)
            m = tl.min(cur, 0)
            r0 = tl.zeros([], tl.int32)
            nxt = tl.min(tl.where((bmax > m) & (rows >= r0), rows, CB), 0)
            while nxt < CB:
                # rows r0 .. nxt-1 inserted nothing: their sets are the current one
                lp = tl.where((offs_k < K) & (cur != kmin), pm - (cur & pm), none).to(tl.int32)
                smask = (rows[:, None] >= r0) & (rows[:, None] < nxt) & (c0 + rows[:, None] < bhi)
                tl.store(LPOS + pid * NB * KP + out_rows[:, None] + offs_k[None, :],
                         tl.broadcast_to(lp[None, :], (CB, KP)), mask=smask)
                cand = tl.max(tl.where(rows[:, None] == nxt, ck, tl.min(kmin, 0)), 0)  # [BS] block nxt's keys
                cand = tl.where(cand > m, cand, tl.min(kmin, 0))
                cur, m = _insert_seq(cur, cand, offs_k, offs_s, tl.min(kmin, 0))
                r0 = nxt
                nxt = tl.min(tl.where((bmax > m) & (rows > r0), rows, CB), 0)
            lp = tl.where((offs_k < K) & (cur != kmin), pm - (cur & pm), none).to(tl.int32)
            smask = (rows[:, None] >= r0) & (c0 + rows[:, None] < bhi)
            tl.store(LPOS + pid * NB * KP + out_rows[:, None] + offs_k[None, :],
                     tl.broadcast_to(lp[None, :], (CB, KP)), mask=smask)
            ck = ck_n
