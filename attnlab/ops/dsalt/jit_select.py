"""DSALT landmark selection (stable slots) and the per-tile partials' reduction (the ``lm_bwd="reduce"``
path). Design: ``kernel.py``'s docstring, which launches them."""

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
    def _bulk_merge(cur, cand, offs_k, offs_s, kmin_s):
        """_insert_seq's result in one step. Within one block an inserted candidate is never evicted
        again (the next candidates are smaller), so the j-th best candidate replaces the j-th
        smallest set entry (equal entries, the empty slots, in slot order) as long as it is larger:
        with r = the ascending rank of each slot's key and s = the descending rank of each
        candidate, slot i takes the candidate with s == r_i where that candidate is the larger."""
        ci = cur[:, None]
        cj = cur[None, :]
        r = tl.sum(((cj < ci) | ((cj == ci) & (offs_k[None, :] < offs_k[:, None]))).to(tl.int32), 1)
        ca = cand[:, None]
        cb = cand[None, :]
        s = tl.sum(((cb > ca) | ((cb == ca) & (offs_s[None, :] < offs_s[:, None]))).to(tl.int32), 1)
        v = tl.max(tl.where(r[:, None] == s[None, :], cand[None, :], kmin_s), 1)
        return tl.where(v > cur, v, cur)

    @triton.jit
    def _bulk_merge_sorted(cur, cand, offs_k, LOGKP: tl.constexpr):
        """_bulk_merge by three sorts of KP values (int32 keys, as many candidates as slots): the
        set ascending with its slots packed below the keys, the candidates descending, pairwise
        the larger, then back into slot order by a sort with the slots packed above the keys."""
        sc = tl.sort(cur.to(tl.int64) * (1 << LOGKP) + offs_k, 0)
        cval = (sc >> LOGKP).to(tl.int32)
        cslot = sc & ((1 << LOGKP) - 1)
        cd = tl.sort(cand, 0, descending=True)
        newv = tl.where(cd > cval, cd, cval)
        ps = tl.sort(cslot * 4294967296 + (newv.to(tl.int64) & 4294967295), 0)
        return (ps & 4294967295).to(tl.int32)

    @triton.jit
    def _select_kernel(E, LPOS, INIT, TOPK, T, NB, S, CH, K: tl.constexpr, KP: tl.constexpr, BS: tl.constexpr,
                       CB: tl.constexpr, KEY32: tl.constexpr, MODE: tl.constexpr = 0, BULK: tl.constexpr = 0,
                       SORTED: tl.constexpr = 1, LOGKP: tl.constexpr = 6, ROWST: tl.constexpr = 0):
        """Causal landmark sets with stable slots, one program per (batch, kv head) and chunk of CH
        candidate blocks; see the module docstring. Chunk c holds the candidate blocks c*CB ..
        c*CB+CB-1; row r's output is the set of block c*CB + r + 1 (the set after that block's
        tokens were offered). The rank keys are computed here from the energies (int32 keys when
        T <= 65536: cheaper reductions). MODE 0: one chunk (CH >= NB), from the empty set; 1: no
        output, the chunk's own top-k keys stored to TOPK [B*Hk, chunks, KP] (empty: the minimum
        key); 2: from the start set INIT [B*Hk, chunks, KP] (the top-k of the tokens before the
        chunk, in key order), sets stored."""
        pid = tl.program_id(0)
        j = tl.program_id(1)
        nch = tl.num_programs(1)
        blo = j * CH
        bhi = tl.minimum(blo + CH, NB - 1)
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
        if MODE == 2:
            cur = tl.where(offs_k < K, tl.load(INIT + (pid * nch + j) * KP + offs_k), kpad)
        else:
            cur = tl.where(offs_k < K, kmin, kpad)
        if MODE != 1:
            # block 0: the empty set (chunk 0 only)
            tl.store(LPOS + pid * NB * KP + offs_k, tl.full([KP], -1, tl.int32), mask=offs_k + j * KP < KP)
        ebase = E + pid * T
        # prefetched chunk of candidate keys [CB, BS]
        pos = (blo + rows)[:, None] * S + offs_s[None, :]
        ck = _keys_tile(ebase, pos, (offs_s[None, :] < S) & (pos < T) & (blo + rows[:, None] < bhi), KEY32)
        for c0 in range(blo, bhi, CB):
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
                if MODE != 1:
                    lp = tl.where((offs_k < K) & (cur != kmin), pm - (cur & pm), none).to(tl.int32)
                    if ROWST:
                        # session 6b: one [KP] store per row (each row is stored once in all), not a
                        # masked [CB, KP] tile per inserting block (one warp: ~CB*KP/32 lanes' work)
                        for r in range(r0, nxt):
                            tl.store(LPOS + pid * NB * KP + (c0 + r + 1) * KP + offs_k, lp)
                    else:
                        smask = (rows[:, None] >= r0) & (rows[:, None] < nxt) & (c0 + rows[:, None] < bhi)
                        tl.store(LPOS + pid * NB * KP + out_rows[:, None] + offs_k[None, :],
                                 tl.broadcast_to(lp[None, :], (CB, KP)), mask=smask)
                cand = tl.max(tl.where(rows[:, None] == nxt, ck, tl.min(kmin, 0)), 0)  # [BS] block nxt's keys
                cand = tl.where(cand > m, cand, tl.min(kmin, 0))
                if BULK > 0:
                    # session 6b: a block with many candidates above the set's minimum is merged in
                    # one step (rank matching, see _bulk_merge: the same slots as the insertions)
                    if tl.sum((cand > m).to(tl.int32), 0) >= BULK:
                        if KEY32 and BS == KP and SORTED:
                            cur = _bulk_merge_sorted(cur, cand, offs_k, LOGKP)
                        else:
                            cur = _bulk_merge(cur, cand, offs_k, offs_s, tl.min(kmin, 0))
                        m = tl.min(cur, 0)
                    else:
                        cur, m = _insert_seq(cur, cand, offs_k, offs_s, tl.min(kmin, 0))
                else:
                    cur, m = _insert_seq(cur, cand, offs_k, offs_s, tl.min(kmin, 0))
                r0 = nxt
                nxt = tl.min(tl.where((bmax > m) & (rows > r0), rows, CB), 0)
            if MODE != 1:
                lp = tl.where((offs_k < K) & (cur != kmin), pm - (cur & pm), none).to(tl.int32)
                if ROWST:
                    for r in range(r0, tl.minimum(CB, bhi - c0)):
                        tl.store(LPOS + pid * NB * KP + (c0 + r + 1) * KP + offs_k, lp)
                else:
                    smask = (rows[:, None] >= r0) & (c0 + rows[:, None] < bhi)
                    tl.store(LPOS + pid * NB * KP + out_rows[:, None] + offs_k[None, :],
                             tl.broadcast_to(lp[None, :], (CB, KP)), mask=smask)
            ck = ck_n
        if MODE == 1:
            tl.store(TOPK + (pid * nch + j) * KP + offs_k, tl.where(offs_k < K, cur, kmin))


    @triton.jit
    def _seg_add(v1, f1, v2, f2):
        return tl.where(f2 != 0, v2, v1 + v2), f1 | f2

    @triton.jit
    def _lm_reduce_kernel(DLK, DLV, DG, LPOS, DK, DV, DGT, E, NB, T,
                          KP: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, CB: tl.constexpr):
        """Add per-block landmark gradients [B*Hk, NB, KP, D] (and gate gradients [.., KP]) into
        dK/dV rows (and the per-token gate gradient): one program per (batch*kv head, slot,
        D chunk) walks its slot column CB blocks at a time; each run of one token is summed by a
        segmented scan and written once, so no two programs touch the same row (no atomics)."""
        pid = tl.program_id(0)
        sl = tl.program_id(1)
        dchunk = tl.program_id(2)
        offs = dchunk * BD + tl.arange(0, BD)
        rows = tl.arange(0, CB)
        carry_k = tl.zeros([BD], tl.float32)
        carry_v = tl.zeros([BD], tl.float32)
        carry_g = tl.zeros([CB], tl.float32)  # only row 0 is used
        base = pid * NB
        for c0 in range(0, NB, CB):
            blk = c0 + rows
            valid = blk < NB
            tok = tl.load(LPOS + (base + blk) * KP + sl, mask=valid, other=-1)
            prv = tl.load(LPOS + (base + blk - 1) * KP + sl, mask=valid & (blk >= 1), other=-1)
            nxt = tl.load(LPOS + (base + blk + 1) * KP + sl, mask=blk + 1 < NB, other=-1)
            start = (tok != prv).to(tl.int32)
            end = valid & (nxt != tok) & (tok >= 0)
            src = ((base + blk)[:, None] * KP + sl) * D + offs[None, :]
            xk = tl.load(DLK + src, mask=valid[:, None], other=0.0).to(tl.float32)
            xv = tl.load(DLV + src, mask=valid[:, None], other=0.0).to(tl.float32)
            # the run open at the end of the previous chunk continues in row 0 unless row 0 starts one
            first = (rows[:, None] == 0) & (start[:, None] == 0)
            xk = xk + tl.where(first, carry_k[None, :], 0.0)
            xv = xv + tl.where(first, carry_v[None, :], 0.0)
            f2 = tl.broadcast_to(start[:, None], (CB, BD))
            sk, _fk = tl.associative_scan((xk, f2), 0, _seg_add)
            sv, _fv = tl.associative_scan((xv, f2), 0, _seg_add)
            row = (pid * T + tl.maximum(tok, 0))[:, None] * D + offs[None, :]
            wm = end[:, None]
            tl.store(DK + row, (tl.load(DK + row, mask=wm, other=0.0).to(tl.float32) + sk).to(DK.dtype.element_ty),
                     mask=wm)
            tl.store(DV + row, (tl.load(DV + row, mask=wm, other=0.0).to(tl.float32) + sv).to(DV.dtype.element_ty),
                     mask=wm)
            last = rows[:, None] == CB - 1
            carry_k = tl.sum(tl.where(last, sk, 0.0), 0)
            carry_v = tl.sum(tl.where(last, sv, 0.0), 0)
            if dchunk == 0:
                xg = tl.load(DG + (base + blk) * KP + sl, mask=valid, other=0.0)
                xg = xg + tl.where((rows == 0) & (start == 0), carry_g, 0.0)
                sg, _fg = tl.associative_scan((xg, start), 0, _seg_add)
                # the energy gradient: d logsigmoid(e) / de = sigmoid(-e)
                et = tl.load(E + pid * T + tl.maximum(tok, 0), mask=end, other=0.0).to(tl.float32)
                tl.store(DGT + pid * T + tl.maximum(tok, 0), sg / (1.0 + tl.exp(et)), mask=end)
                carry_g = tl.broadcast_to(tl.sum(tl.where(rows == CB - 1, sg, 0.0), 0), (CB,))
