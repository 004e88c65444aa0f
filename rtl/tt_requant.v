`timescale 1ns / 1ps
/* verilator lint_off WIDTHEXPAND */
// Requantization of one full-width accumulator, exactly as docs/fixed_point.md section 4.5 says:
// shift > 0: arithmetic right shift by `shift` with the rounding mode applied to the dropped bits;
// shift <= 0: exact left shift by -shift; then saturate or wrap into the target width (MID_W for an
// intermediate step, OUT_W for the last step). Registered: code and overflow update on a clock edge
// with `en` (one cycle of latency), so a simulator evaluates it only when a result is ready.
module tt_requant #(
    parameter ACC_W      = 40,   // accumulator width (>= every step's W_acc)
    parameter MID_W      = 8,    // intermediate code width
    parameter OUT_W      = 8,    // output code width
    parameter LSHIFT_MAX = 16,   // largest left shift (-shift) supported
    parameter RW         = (MID_W > OUT_W) ? MID_W : OUT_W
) (
    input  wire                    clk,
    input  wire                    en,
    input  wire signed [ACC_W-1:0] acc,
    input  wire signed [7:0]       shift,     // -LSHIFT_MAX .. XW-2
    input  wire [1:0]              rounding,  // 0 floor, 1 half_up, 2 half_even
    input  wire                    wrap,      // 0 saturate, 1 wrap
    input  wire                    last,      // 1: target OUT_W, 0: target MID_W
    output reg  signed [RW-1:0]    code,
    output reg                     overflow
);
    localparam XW = ACC_W + LSHIFT_MAX + 2;   // holds any shifted value and 2^(XW-2)
    localparam signed [XW-1:0] ONE = 1;

    reg signed [XW-1:0] a, q, rem, half, hi, lo;
    reg [7:0] rs, ls;
    reg signed [MID_W-1:0] q_mid;
    reg signed [OUT_W-1:0] q_out;

    always @(posedge clk) if (en) begin
        a = acc;                                       // sign-extended to XW bits
        rs = shift[7] ? 8'd0 : shift;
        ls = shift[7] ? -shift : 8'd0;
        if (shift > 0) begin
            q = a >>> rs;
            rem = a & ((ONE <<< rs) - ONE);
            half = ONE <<< (rs - 8'd1);
            case (rounding)
                2'd1: q = q + ((rem >= half) ? ONE : 0);
                2'd2: q = q + (((rem > half) || (rem == half && q[0])) ? ONE : 0);
                default: ;
            endcase
        end else begin
            rem = 0;
            half = 0;
            q = a <<< ls;
        end
        hi = last ? ((ONE <<< (OUT_W - 1)) - ONE) : ((ONE <<< (MID_W - 1)) - ONE);
        lo = last ? -(ONE <<< (OUT_W - 1)) : -(ONE <<< (MID_W - 1));
        overflow <= (q > hi) || (q < lo);
        q_mid = q[MID_W-1:0];
        q_out = q[OUT_W-1:0];
        if (((q > hi) || (q < lo)) && !wrap)
            code <= (q > hi) ? hi[RW-1:0] : lo[RW-1:0];
        else if (last)
            code <= q_out;                             // in range, or its low OUT_W bits (wrap)
        else
            code <= q_mid;
    end
endmodule
