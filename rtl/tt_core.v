`timescale 1ns / 1ps
/* verilator lint_off WIDTHTRUNC */
/* verilator lint_off WIDTHEXPAND */
// tt_core: a tensor-train-matrix layer y = W x for a stream of input vectors, in the integer spec of
// docs/fixed_point.md (core 0 first, requantized after every core step). docs/rtl.md describes the
// micro-architecture, the interface and the cycle count.
//
// LANES input vectors (a "group") are evaluated side by side: lane l holds vector l of the group in
// its slice of the wide buffers, and every cycle all lanes multiply-accumulate the same TT-core
// entry (broadcast from the weight RAM) with their own state value. One schedule for all lanes, so
// every buffer is one wide single-port RAM.
//
// Step k of K sums T_k = r_k n_k products for each of its V_k = D_k MR_k R_k output values:
//   state   t_{k-1}[I][t][J]  at (I T_k + t) R_k + J      (I < D_k outputs done, J < R_k inputs left)
//   weight  G_k[t][o]         at WBASE_k + t MR_k + o      (t = a n_k + j_k, o = i_k r_{k+1} + c)
//   result  t_k[I][o][J]      at (I MR_k + o) R_k + J      (written in address order)
module tt_core #(
    parameter LANES      = 16,    // vectors evaluated in parallel (MAC lanes)
    parameter IN_W       = 8,     // input code width
    parameter W_W        = 8,     // TT-core code width
    parameter MID_W      = 8,     // intermediate code width
    parameter OUT_W      = 8,     // output code width
    parameter BIAS_W     = 32,    // bias code width (<= 32)
    parameter ACC_W      = 40,    // accumulator width (>= every step's W_acc)
    parameter MAX_CORES  = 8,
    parameter W_DEPTH    = 2048,  // weight RAM words (all cores)
    parameter S_DEPTH    = 4096,  // state RAM words per bank (largest intermediate, per lane)
    parameter IN_DEPTH   = 1024,  // input buffer words (input features)
    parameter OUT_DEPTH  = 1024,  // output buffer words (output features)
    parameter LSHIFT_MAX = 16,
    parameter CNT_W      = 48
) (
    input  wire                     clk,
    input  wire                     rst,
    // configuration and RAM writes: sel 0 registers, 1 weight RAM, 2 bias RAM (idle core only)
    input  wire                     cfg_we,
    input  wire [1:0]               cfg_sel,
    input  wire [15:0]              cfg_addr,
    input  wire [31:0]              cfg_wdata,
    input  wire                     start,
    output reg                      busy,
    output reg                      done,
    // input stream: one beat = one input feature of every lane's vector
    input  wire                     in_valid,
    output wire                     in_ready,
    input  wire [LANES*IN_W-1:0]    in_data,
    // output stream: one beat = one output feature of every lane's vector; last = end of a group
    output reg                      out_valid,
    input  wire                     out_ready,
    output reg  [LANES*OUT_W-1:0]   out_data,
    output reg                      out_last,
    // debug: pulses for one cycle after core step `step_index` of a group has been written
    output reg                      step_done,
    output reg  [7:0]               step_index,
    // counters, cleared by start
    output reg  [CNT_W-1:0]         cnt_cycles,
    output reg  [CNT_W-1:0]         cnt_macs,          // lane MACs on real (not padding) vectors
    output reg  [CNT_W-1:0]         cnt_issue,         // MAC cycles (all lanes busy or not)
    output reg  [CNT_W-1:0]         cnt_weight_reads,
    output reg  [CNT_W-1:0]         cnt_state_reads,   // wide words, input buffer included
    output reg  [CNT_W-1:0]         cnt_state_writes,  // wide words, output buffer included
    output reg  [CNT_W-1:0]         cnt_bias_reads,
    output reg  [CNT_W-1:0]         cnt_overflows      // requantization overflows on real vectors
);
    localparam RW = (MID_W > OUT_W) ? MID_W : OUT_W;   // requantized code width

    // ---- configuration registers -------------------------------------------------------------
    // 0 NUM_CORES, 1 ROWS, 2 MODE {bias_en, wrap, rounding[1:0]}, 3 IN_LEN, 4 OUT_LEN,
    // 8 + 8k + {0 T, 1 MR, 2 R, 3 D, 4 SHIFT, 5 WBASE}
    reg [31:0] num_cores, rows_cfg, in_len, out_len;
    reg [1:0]  rounding;
    reg        wrap, bias_en;
    reg [31:0] c_t [0:MAX_CORES-1];
    reg [31:0] c_mr [0:MAX_CORES-1];
    reg [31:0] c_r [0:MAX_CORES-1];
    reg [31:0] c_d [0:MAX_CORES-1];
    reg [7:0]  c_shift [0:MAX_CORES-1];
    reg [31:0] c_wbase [0:MAX_CORES-1];

    // ---- RAMs ---------------------------------------------------------------------------------
    reg [W_W-1:0]          wram [0:W_DEPTH-1];
    reg [BIAS_W-1:0]       bram [0:OUT_DEPTH-1];
    reg [LANES*IN_W-1:0]   ibuf [0:IN_DEPTH-1];
    reg [LANES*MID_W-1:0]  bank_a [0:S_DEPTH-1];
    reg [LANES*MID_W-1:0]  bank_b [0:S_DEPTH-1];
    reg [LANES*OUT_W-1:0]  obuf [0:OUT_DEPTH-1];

    always @(posedge clk) begin
        if (cfg_we && !busy) begin
            case (cfg_sel)
                2'd0: begin
                    case (cfg_addr)
                        16'd0: num_cores <= cfg_wdata;
                        16'd1: rows_cfg <= cfg_wdata;
                        16'd2: begin rounding <= cfg_wdata[1:0]; wrap <= cfg_wdata[2]; bias_en <= cfg_wdata[3]; end
                        16'd3: in_len <= cfg_wdata;
                        16'd4: out_len <= cfg_wdata;
                        default: ;
                    endcase
                    if (cfg_addr >= 16'd8 && cfg_addr < 16'd8 + 8 * MAX_CORES)
                        case (cfg_addr[2:0])
                            3'd0: c_t[(cfg_addr - 16'd8) >> 3] <= cfg_wdata;
                            3'd1: c_mr[(cfg_addr - 16'd8) >> 3] <= cfg_wdata;
                            3'd2: c_r[(cfg_addr - 16'd8) >> 3] <= cfg_wdata;
                            3'd3: c_d[(cfg_addr - 16'd8) >> 3] <= cfg_wdata;
                            3'd4: c_shift[(cfg_addr - 16'd8) >> 3] <= cfg_wdata[7:0];
                            3'd5: c_wbase[(cfg_addr - 16'd8) >> 3] <= cfg_wdata;
                            default: ;
                        endcase
                end
                2'd1: wram[cfg_addr] <= cfg_wdata[W_W-1:0];
                2'd2: bram[cfg_addr] <= cfg_wdata[BIAS_W-1:0];
                default: ;
            endcase
        end
    end

    // ---- buffer ownership: the loader fills ibuf, the engine empties it; the engine fills obuf,
    // the drainer empties it --------------------------------------------------------------------
    reg ibuf_full, obuf_full;
    wire ibuf_set, obuf_clr;
    reg  ibuf_clr, obuf_set;
    always @(posedge clk) begin
        if (rst || start) begin
            ibuf_full <= 1'b0;
            obuf_full <= 1'b0;
        end else begin
            if (ibuf_set) ibuf_full <= 1'b1; else if (ibuf_clr) ibuf_full <= 1'b0;
            if (obuf_set) obuf_full <= 1'b1; else if (obuf_clr) obuf_full <= 1'b0;
        end
    end

    // ---- loader: in_len beats per group into ibuf ---------------------------------------------
    reg [31:0] ld_rows, ld_ptr;
    assign in_ready = busy && !ibuf_full && (ld_rows != 0);
    wire in_fire = in_valid && in_ready;
    assign ibuf_set = in_fire && (ld_ptr == in_len - 1);
    always @(posedge clk) begin
        if (rst) begin
            ld_rows <= 0;
            ld_ptr <= 0;
        end else if (start && !busy) begin
            ld_rows <= rows_cfg;
            ld_ptr <= 0;
        end else if (in_fire) begin
            ibuf[ld_ptr] <= in_data;
            if (ld_ptr == in_len - 1) begin
                ld_ptr <= 0;
                ld_rows <= (ld_rows > LANES) ? ld_rows - LANES : 0;
            end else
                ld_ptr <= ld_ptr + 1;
        end
    end

    // ---- drainer: out_len beats per group from obuf (registered read, no bubbles) ---------------
    reg [31:0] dr_ptr;
    wire dr_take = obuf_full && (!out_valid || out_ready);
    assign obuf_clr = dr_take && (dr_ptr == out_len - 1);
    always @(posedge clk) begin
        if (rst || (start && !busy)) begin
            out_valid <= 1'b0;
            out_last <= 1'b0;
            dr_ptr <= 0;
        end else if (!out_valid || out_ready) begin
            out_valid <= obuf_full;
            if (obuf_full) begin
                out_data <= obuf[dr_ptr];
                out_last <= (dr_ptr == out_len - 1);
                dr_ptr <= (dr_ptr == out_len - 1) ? 0 : dr_ptr + 1;
            end
        end
    end

    // ---- engine ---------------------------------------------------------------------------------
    localparam E_IDLE = 3'd0, E_GROUP = 3'd1, E_STEP = 3'd2, E_RUN = 3'd3, E_DRAIN = 3'd4, E_FINISH = 3'd5;
    reg [2:0]  st;
    reg [7:0]  k;
    reg [31:0] rows_left, act;
    reg [31:0] s_t, s_mr, s_r, s_d, s_wbase, s_tr;
    reg [7:0]  s_shift;
    reg        s_last;
    reg [31:0] t, jj, o, ii, ibase, rbase, taddr, wo, wcur, oaddr;
    reg [1:0]  dcnt;
    reg [31:0] nr, nw;                    // state / weight row of the next output value
    always @* begin
        if (jj != s_r - 1) begin
            nr = rbase + 1;
            nw = wo;
        end else if (o != s_mr - 1) begin
            nr = ibase;
            nw = wo + 1;
        end else begin
            nr = ibase + s_tr;
            nw = s_wbase;
        end
    end

    // pipeline: stage a (RAM data), stage b (accumulators), stage c (requantized codes), then the write
    reg                    a_v, a_first, a_last, a_from_in;
    reg [31:0]             a_oaddr;
    reg [LANES*IN_W-1:0]   a_xin;     // operands read from the input buffer (step 0) ...
    reg [LANES*MID_W-1:0]  a_xmid;    // ... or from a state bank
    reg signed [W_W-1:0]   a_w;
    reg signed [BIAS_W-1:0] a_bias;
    reg                    b_v, c_v;
    reg [31:0]             b_oaddr, c_oaddr;
    reg [1:0]              src;       // step's operand source: 0 ibuf, 1 bank_a, 2 bank_b
    reg [1:0]              dst;       // step's result: 1 bank_a, 2 bank_b, 3 obuf
    always @(posedge clk) begin
        ibuf_clr <= 1'b0;
        obuf_set <= 1'b0;
        step_done <= 1'b0;
        a_v <= 1'b0;
        if (rst) begin
            st <= E_IDLE;
            busy <= 1'b0;
            done <= 1'b0;
        end else begin
            case (st)
                E_IDLE: if (start) begin
                    busy <= 1'b1;
                    done <= 1'b0;
                    rows_left <= rows_cfg;
                    st <= E_GROUP;
                end
                E_GROUP: begin
                    if (rows_left == 0)
                        st <= E_FINISH;
                    else if (ibuf_full) begin
                        act <= (rows_left > LANES) ? LANES : rows_left;
                        k <= 0;
                        st <= E_STEP;
                    end
                end
                E_STEP: begin                     // load step k's descriptor; the last waits for obuf
                    s_t <= c_t[k];
                    s_mr <= c_mr[k];
                    s_r <= c_r[k];
                    s_d <= c_d[k];
                    s_tr <= c_t[k] * c_r[k];
                    s_shift <= c_shift[k];
                    s_wbase <= c_wbase[k];
                    s_last <= (k == num_cores - 1);
                    src <= (k == 0) ? 2'd0 : (k[0] ? 2'd1 : 2'd2);
                    dst <= (k == num_cores - 1) ? 2'd3 : (k[0] ? 2'd2 : 2'd1);
                    t <= 0; jj <= 0; o <= 0; ii <= 0;
                    ibase <= 0; rbase <= 0; taddr <= 0; oaddr <= 0;
                    wo <= c_wbase[k];
                    wcur <= c_wbase[k];
                    if (!(k == num_cores - 1 && obuf_full))
                        st <= E_RUN;
                end
                E_RUN: begin                      // one MAC issue per cycle
                    a_v <= 1'b1;
                    a_first <= (t == 0);
                    a_last <= (t == s_t - 1);
                    a_oaddr <= oaddr;
                    if (t == s_t - 1) begin
                        t <= 0;
                        oaddr <= oaddr + 1;
                        if (jj == s_r - 1) begin
                            jj <= 0;
                            if (o == s_mr - 1) begin
                                o <= 0;
                                ii <= ii + 1;
                                ibase <= ibase + s_tr;
                                if (ii == s_d - 1) begin
                                    dcnt <= 0;
                                    st <= E_DRAIN;
                                end
                            end else
                                o <= o + 1;
                        end else
                            jj <= jj + 1;
                        rbase <= nr;
                        taddr <= nr;
                        wo <= nw;
                        wcur <= nw;
                    end else begin
                        t <= t + 1;
                        taddr <= taddr + s_r;
                        wcur <= wcur + s_mr;
                    end
                end
                E_DRAIN: begin                    // the last results pass the pipeline
                    dcnt <= dcnt + 1;
                    if (dcnt == 2'd2) begin
                        step_done <= 1'b1;
                        step_index <= k;
                        if (k == 0) ibuf_clr <= 1'b1;
                        if (s_last) begin
                            obuf_set <= 1'b1;
                            rows_left <= rows_left - act;
                            st <= E_GROUP;
                        end else begin
                            k <= k + 1;
                            st <= E_STEP;
                        end
                    end
                end
                E_FINISH: if (!obuf_full && !out_valid) begin
                    busy <= 1'b0;
                    done <= 1'b1;
                    st <= E_IDLE;
                end
                default: st <= E_IDLE;
            endcase
        end
    end

    // stage a: RAM reads (registered); only the step's source buffer is read
    always @(posedge clk) begin
        a_w <= wram[wcur];
        a_bias <= bram[oaddr];
        a_from_in <= (src == 2'd0);
        case (src)
            2'd0: a_xin <= ibuf[taddr];
            2'd1: a_xmid <= bank_a[taddr];
            default: a_xmid <= bank_b[taddr];
        endcase
    end

    // stage b: full-width multiply-accumulate per lane (the bias is the first addend of the last step)
    wire signed [ACC_W-1:0] acc_init = (s_last && bias_en) ? a_bias : 0;
    reg  signed [ACC_W-1:0] acc [0:LANES-1];
    integer m;
    always @(posedge clk) begin
        b_v <= a_v && a_last;
        b_oaddr <= a_oaddr;
        if (a_v)
            for (m = 0; m < LANES; m = m + 1)
                if (a_from_in)
                    acc[m] <= (a_first ? acc_init : acc[m]) + $signed(a_xin[m*IN_W +: IN_W]) * a_w;
                else
                    acc[m] <= (a_first ? acc_init : acc[m]) + $signed(a_xmid[m*MID_W +: MID_W]) * a_w;
    end

    // stage c: requantization, one tt_requant per lane, enabled when a lane's sum is complete
    wire [LANES*RW-1:0] rq_code;
    wire [LANES-1:0]    rq_ovf;
    genvar l;
    generate
        for (l = 0; l < LANES; l = l + 1) begin : g_rq
            tt_requant #(.ACC_W(ACC_W), .MID_W(MID_W), .OUT_W(OUT_W), .LSHIFT_MAX(LSHIFT_MAX)) u_rq (
                .clk(clk), .en(b_v), .acc(acc[l]), .shift(s_shift), .rounding(rounding), .wrap(wrap),
                .last(s_last), .code(rq_code[l*RW +: RW]), .overflow(rq_ovf[l]));
        end
    endgenerate

    // the write: requantized codes into the step's result buffer; overflows of real vectors counted
    reg [LANES*MID_W-1:0] wr_mid;
    reg [LANES*OUT_W-1:0] wr_out;
    always @(posedge clk) begin
        c_v <= b_v;
        c_oaddr <= b_oaddr;
        if (c_v) begin
            for (m = 0; m < LANES; m = m + 1) begin
                wr_mid[m*MID_W +: MID_W] = rq_code[m*RW +: MID_W];
                wr_out[m*OUT_W +: OUT_W] = rq_code[m*RW +: OUT_W];
            end
            case (dst)
                2'd1: bank_a[c_oaddr] <= wr_mid;
                2'd2: bank_b[c_oaddr] <= wr_mid;
                default: obuf[c_oaddr] <= wr_out;
            endcase
        end
    end

    function [7:0] popcount_active(input [LANES-1:0] flags);
        integer n;
        begin
            popcount_active = 0;
            for (n = 0; n < LANES; n = n + 1)
                if (n < act && flags[n]) popcount_active = popcount_active + 1;
        end
    endfunction

    // ---- counters ---------------------------------------------------------------------------------
    always @(posedge clk) begin
        if (rst || (start && !busy)) begin
            cnt_cycles <= 0; cnt_macs <= 0; cnt_issue <= 0; cnt_weight_reads <= 0;
            cnt_state_reads <= 0; cnt_state_writes <= 0; cnt_bias_reads <= 0; cnt_overflows <= 0;
        end else begin
            if (busy) cnt_cycles <= cnt_cycles + 1;
            if (st == E_RUN) begin
                cnt_issue <= cnt_issue + 1;
                cnt_macs <= cnt_macs + act;
                cnt_weight_reads <= cnt_weight_reads + 1;
                cnt_state_reads <= cnt_state_reads + 1;
                if (s_last && bias_en && t == 0) cnt_bias_reads <= cnt_bias_reads + 1;
            end
            if (c_v) begin
                cnt_state_writes <= cnt_state_writes + 1;
                cnt_overflows <= cnt_overflows + popcount_active(rq_ovf);
            end
        end
    end
endmodule
