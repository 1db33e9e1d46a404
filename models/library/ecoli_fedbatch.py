"""E. coli fed-batch with overflow metabolism, acetate cycling, oxygen transfer and temperature.

Structure (Xu, Jahic, Enfors 1999, Biotechnol. Prog. 15:81-90): the respiratory capacity
qO_max bounds the oxidative glucose flux; glucose taken up beyond that critical flux
overflows to acetate. Acetate is taken up again only with spare respiratory capacity, and
less when glucose uptake is high (acetate cycling, Anane et al. 2017, Biochem. Eng. J.
125:23-30, whose fitted constants are used for acetate and glucose uptake). Temperature acts
on the uptake capacities through the cardinal temperature model with inflection (Rosso et al.
1993, J. Theor. Biol. 162:447-463). Oxygen transfer follows a van't Riet (1979) correlation
kLa = k (P/V)^a v_s^b (Ind. Eng. Chem. Process Des. Dev. 18:357-364, coalescing broth).

Balances are closed on purpose: CO2 is the carbon not found in biomass, acetate or
product; oxygen uptake follows from an electron (degree-of-reduction) balance (Roels
1983, Energetics and Kinetics in Biotechnology), so OUR, CER and RQ are consistent with the
states, and metabolic heat is 460 kJ per mol O2 (Cooney, Wang, Wang 1969, Biotechnol.
Bioeng. 11:269-281).

Units: time h, concentrations g/L, DO % air saturation, volume L, temperature degC.
"""

from __future__ import annotations

from typing import Any

from models import Input, MathNamespace, Model, Output, Parameter, State, Values

XU = "Xu, Jahic, Enfors (1999) Biotechnol. Prog. 15:81-90"
ANANE = "Anane et al. (2017) Biochem. Eng. J. 125:23-30, Table 2"
ROSSO = "Rosso et al. (1993) J. Theor. Biol. 162:447-463; E. coli K-12 values after Van Derlinden et al. (2008) Int. J. Food Microbiol. 128:89-100"  # noqa: E501
VANTRIET = "van't Riet (1979) Ind. Eng. Chem. Process Des. Dev. 18:357-364"
STOICH = "elemental composition (stoichiometry)"
ROELS = "Roels (1983) Energetics and Kinetics in Biotechnology, Elsevier"
REACTOR = "lab-scale 15 L stirred tank (Rushton turbine), design value"

# Degrees of reduction per C-mol (Roels 1983): glucose and acetate 4, biomass CH1.8O0.5N0.2
# with NH3 as N source 4.2, protein product about 4.3.
GAMMA_S, GAMMA_A, GAMMA_X, GAMMA_P = 4.0, 4.0, 4.2, 4.3
MOLAR_VOLUME_NL = 22.414  # L/mol of ideal gas at 0 degC, 1 atm


def cardinal_temperature(m: MathNamespace, T: Any, Tmin: Any, Topt: Any, Tmax: Any) -> Any:
    """CTMI factor in [0, 1] (Rosso et al. 1993): 1 at Topt, 0 outside (Tmin, Tmax)."""
    num = (T - Tmax) * (T - Tmin) ** 2
    den = (Topt - Tmin) * ((Topt - Tmin) * (T - Topt) - (Topt - Tmax) * (Topt + Tmin - 2 * T))
    inside = (Tmin < T) * (Tmax > T)
    safe_den = m.if_else(inside, den, 1.0)
    return m.if_else(inside, num / safe_den, 0.0)


def fluxes(m: MathNamespace, x: Values, u: Values, p: Values) -> dict[str, Any]:
    """Specific rates of the cell (g/g/h unless stated), shared by rhs and outputs."""
    S = m.fmax(x.S, 0.0)
    A = m.fmax(x.A, 0.0)
    DO = m.fmax(x.DO, 0.0)
    fT = cardinal_temperature(m, x.T, p.T_min, p.T_opt, p.T_max)
    # glucose uptake capacity from the growth capacity: mu_max = (qS_max - qm) Y_xs
    # strictly aerobic: every flux, maintenance included, stops as DO goes to zero
    fO = DO / (p.K_o + DO)
    q_m = p.q_m * fO
    qS_max = (p.mu_max / p.Y_xs + p.q_m) * fT
    qS = qS_max * S / (p.K_s + S) / (1.0 + A / p.K_ia) * fO
    # respiratory capacity (mmol O2/g/h), reduced at low DO
    qO_cap = p.qO_max * fO
    # O2 demand of the oxidative glucose route per unit flux (electron balance, mmol/g)
    o_ox = 1000.0 / 48.0 * (GAMMA_S * p.C_s - GAMMA_X * p.Y_xs * p.C_x)
    o_m = 1000.0 / 48.0 * GAMMA_X * p.Y_xs * p.C_x * q_m  # maintenance share, mmol/g/h
    qS_crit = m.fmax((qO_cap - o_m) / o_ox, 0.0)
    qS_ox = m.fmin(qS, qS_crit)
    qS_of = qS - qS_ox
    p_A = p.Y_as * qS_of
    # acetate uptake: kinetic capacity, repressed by glucose uptake, limited by spare O2
    o_a = 1000.0 / 48.0 * (GAMMA_A * p.C_a - GAMMA_X * p.Y_xa * p.C_x)
    # spare respiratory capacity, = qO_cap - (o_ox qS_ox + o_m); written so it is exactly 0
    # in overflow (no rounding residue deciding which branch of the min below is taken)
    spare = o_ox * m.fmax(qS_crit - qS, 0.0)
    qA_kin = p.qA_max * fT * A / (p.K_sa + A) / (1.0 + qS / p.K_is)
    qA_c = m.fmin(qA_kin, spare / o_a)
    mu = (qS_ox - q_m) * p.Y_xs + qA_c * p.Y_xa
    q_P = p.alpha_P * m.fmax(mu, 0.0) + p.beta_P * fT * fO
    # carbon to CO2 (g C/g/h) and O2 from the electron balance (mmol/g/h)
    q_C = qS * p.C_s + qA_c * p.C_a - mu * p.C_x - p_A * p.C_a - q_P * p.C_p
    q_O2 = (
        1000.0
        / 48.0
        * (
            GAMMA_S * qS * p.C_s
            + GAMMA_A * (qA_c - p_A) * p.C_a
            - GAMMA_X * mu * p.C_x
            - GAMMA_P * q_P * p.C_p
        )
    )
    return {
        "qS": qS,
        "qS_crit": qS_crit,
        "qS_ox": qS_ox,
        "qS_of": qS_of,
        "p_A": p_A,
        "qA_c": qA_c,
        "mu": mu,
        "q_P": q_P,
        "q_C": q_C,
        "q_O2": q_O2,
        "fT": fT,
    }


def kla(m: MathNamespace, x: Values, u: Values, p: Values) -> Any:
    """Volumetric O2 transfer coefficient (1/h) from ungassed power per volume and gas velocity."""
    power_W = p.N_p * p.rho * (u.N_stir / 60.0) ** 3 * p.D_imp**5
    p_per_v = power_W / (m.fmax(x.V, 1e-3) / 1000.0)  # W/m3
    area = m.pi * p.D_tank**2 / 4.0
    v_s = u.Q_air / 60000.0 / area  # m/s
    return 3600.0 * p.kla_factor * p.k_kla * p_per_v**p.a_kla * v_s**p.b_kla


def rhs(m: MathNamespace, x: Values, u: Values, p: Values) -> dict[str, Any]:
    """Mass balances of a fed-batch stirred tank, per hour."""
    r = fluxes(m, x, u, p)
    D = u.F / x.V
    OUR = r["q_O2"] * x.X  # mmol/L/h
    return {
        "X": (r["mu"] - D) * x.X,
        "S": D * (p.S_feed - x.S) - r["qS"] * x.X,
        "A": (r["p_A"] - r["qA_c"]) * x.X - D * x.A,
        "DO": kla(m, x, u, p) * (100.0 - x.DO) - 100.0 * OUR / p.C_O2_sat,
        "V": u.F,
        "P": r["q_P"] * x.X - D * x.P,
        "T": (u.T_set - x.T) / p.tau_T,
    }


def measure(m: MathNamespace, x: Values, u: Values, p: Values) -> dict[str, Any]:
    """Online probes, off-gas analysis with an inert N2 balance, offline assays, heat."""
    r = fluxes(m, x, u, p)
    OUR = r["q_O2"] * x.X  # mmol/L/h
    CER = r["q_C"] / 12.0 * 1000.0 * x.X  # mmol/L/h
    n_in = u.Q_air * 60.0 / MOLAR_VOLUME_NL  # mol/h of inlet air
    our_tot = OUR * x.V / 1000.0  # mol/h
    cer_tot = CER * x.V / 1000.0
    n_out = n_in - our_tot + cer_tot
    return {
        "DO_probe": x.DO,
        "T_probe": x.T,
        "OUR": OUR,
        "CER": CER,
        "y_O2_out": 100.0 * (n_in * p.y_O2_in - our_tot) / n_out,
        "y_CO2_out": 100.0 * (n_in * p.y_CO2_in + cer_tot) / n_out,
        "V_meas": x.V,
        "X_off": x.X,
        "S_off": x.S,
        "A_off": x.A,
        "P_off": x.P,
        "Q_heat": p.dH_O2 * OUR * x.V / 1000.0 / 3.6,  # kJ/mol * mol/h -> W
        "P_total": x.P * x.V,  # g of product in the broth
    }


_p = Parameter.of  # positional: name, unit, value, lower, upper, source, description


MODEL = Model(
    name="ecoli_fedbatch",
    description="E. coli fed-batch: overflow metabolism, acetate cycling, kLa, temperature",
    states=(
        State(name="X", unit="g/L", lower=0.0, upper=150.0, nominal=0.3, description="biomass"),
        State(name="S", unit="g/L", lower=0.0, upper=600.0, nominal=10.0, description="glucose"),
        State(name="A", unit="g/L", lower=0.0, upper=30.0, nominal=0.0, description="acetate"),
        State(
            name="DO",
            unit="%",
            lower=0.0,
            upper=110.0,
            nominal=100.0,
            description="dissolved oxygen, % of air saturation",
        ),
        State(name="V", unit="L", lower=0.5, upper=12.0, nominal=6.0, description="broth volume"),
        State(
            name="P",
            unit="g/L",
            lower=0.0,
            upper=50.0,
            nominal=0.0,
            description="recombinant product",
        ),
        State(
            name="T",
            unit="degC",
            lower=4.0,
            upper=50.0,
            nominal=37.0,
            description="broth temperature",
        ),
    ),
    inputs=(
        Input(
            name="F",
            unit="L/h",
            lower=0.0,
            upper=0.5,
            nominal=0.0,
            description="glucose feed rate (pump limit 0.5 L/h)",
        ),
        Input(
            name="Q_air", unit="NL/min", lower=1.0, upper=20.0, nominal=6.0, description="air flow"
        ),
        Input(
            name="N_stir",
            unit="rpm",
            lower=200.0,
            upper=1200.0,
            nominal=600.0,
            description="agitation speed",
        ),
        Input(
            name="T_set",
            unit="degC",
            lower=25.0,
            upper=40.0,
            nominal=37.0,
            description="temperature setpoint",
        ),
    ),
    parameters=(
        _p("mu_max", "1/h", 0.65, 0.05, 2.0, XU, "growth capacity at T_opt"),
        _p("Y_xs", "g/g", 0.51, 0.2, 0.8, XU, "biomass yield on oxidised glucose"),
        _p("q_m", "g/g/h", 0.0129, 0.0, 0.1, ANANE, "maintenance glucose demand"),
        _p("K_s", "g/L", 0.037, 1e-4, 1.0, ANANE, "glucose affinity"),
        _p("K_ia", "g/L", 1.2399, 0.05, 20.0, ANANE, "acetate inhibition of glucose uptake"),
        _p("qO_max", "mmol/g/h", 12.0, 3.0, 30.0, XU, "respiratory capacity"),
        _p("K_o", "%", 0.5, 1e-3, 10.0, XU, "DO affinity of respiration"),
        _p("qA_max", "g/g/h", 0.1148, 0.0, 1.0, ANANE, "acetate uptake capacity"),
        _p("K_sa", "g/L", 0.0134, 1e-4, 1.0, ANANE, "acetate affinity"),
        _p("K_is", "g/g/h", 2.1231, 0.05, 20.0, ANANE, "glucose-uptake repression of qA"),
        _p("Y_xa", "g/g", 0.5718, 0.1, 0.8, ANANE, "biomass yield on acetate"),
        _p(
            "Y_as",
            "g/g",
            0.9097,
            0.1,
            1.0,
            ANANE,
            "acetate formed per overflow glucose (carbon: at most 1 g/g)",
        ),
        _p(
            "alpha_P",
            "g/g",
            0.05,
            0.0,
            1.0,
            "Luedeking and Piret (1959) J. Biochem. Microbiol. Technol. Eng. 1:393",
            "growth-associated product yield",
        ),
        _p(
            "beta_P",
            "g/g/h",
            0.002,
            0.0,
            0.1,
            "Luedeking and Piret (1959) J. Biochem. Microbiol. Technol. Eng. 1:393",
            "non-growth-associated product rate",
        ),
        _p("C_s", "gC/g", 0.4, 0.3, 0.5, STOICH, "carbon fraction of glucose C6H12O6"),
        _p("C_a", "gC/g", 0.4, 0.3, 0.5, STOICH, "carbon fraction of acetic acid C2H4O2"),
        _p("C_x", "gC/g", 0.488, 0.3, 0.6, ANANE, "carbon fraction of E. coli biomass"),
        _p("C_p", "gC/g", 0.53, 0.3, 0.6, STOICH, "carbon fraction of protein"),
        _p("T_min", "degC", 5.0, -5.0, 20.0, ROSSO, "minimum growth temperature"),
        _p("T_opt", "degC", 40.0, 30.0, 45.0, ROSSO, "optimum growth temperature"),
        _p("T_max", "degC", 47.0, 42.0, 55.0, ROSSO, "maximum growth temperature"),
        _p("tau_T", "h", 0.2, 0.01, 2.0, REACTOR, "time constant of the temperature loop"),
        _p("S_feed", "g/L", 500.0, 50.0, 800.0, REACTOR, "glucose in the feed"),
        _p("k_kla", "-", 0.026, 1e-3, 0.1, VANTRIET, "kLa prefactor (SI units, 1/s)"),
        _p("a_kla", "-", 0.4, 0.2, 0.8, VANTRIET, "exponent of P/V"),
        _p("b_kla", "-", 0.5, 0.2, 0.8, VANTRIET, "exponent of superficial gas velocity"),
        _p(
            "kla_factor",
            "-",
            1.0,
            0.2,
            5.0,
            VANTRIET,
            "multiplier on the correlation (broth effects), tracked by the estimator",
        ),
        _p("N_p", "-", 5.0, 0.5, 8.0, "Rushton (1950) Chem. Eng. Prog. 46:395", "power number"),
        _p("D_imp", "m", 0.075, 0.02, 0.5, REACTOR, "impeller diameter"),
        _p("D_tank", "m", 0.22, 0.05, 2.0, REACTOR, "vessel inner diameter"),
        _p("rho", "kg/m3", 1000.0, 900.0, 1200.0, STOICH, "broth density"),
        _p(
            "C_O2_sat",
            "mmol/L",
            0.214,
            0.1,
            0.4,
            "O2 solubility in water at 37 degC under air (Benson and Krause 1984)",
            "O2 concentration at 100 % DO",
        ),
        _p("y_O2_in", "-", 0.2095, 0.15, 0.5, STOICH, "O2 mole fraction of inlet air"),
        _p("y_CO2_in", "-", 0.0004, 0.0, 0.01, STOICH, "CO2 mole fraction of inlet air"),
        _p(
            "dH_O2",
            "kJ/mol",
            460.0,
            380.0,
            520.0,
            "Cooney, Wang, Wang (1969) Biotechnol. Bioeng. 11:269-281",
            "heat per mol O2",
        ),
    ),
    outputs=(
        Output(name="DO_probe", unit="%", lower=0.0, upper=200.0, description="DO probe"),
        Output(name="T_probe", unit="degC", lower=-5.0, upper=100.0, description="Pt100"),
        Output(
            name="OUR", unit="mmol/L/h", lower=-50.0, upper=1000.0, description="oxygen uptake rate"
        ),
        Output(
            name="CER", unit="mmol/L/h", lower=-50.0, upper=1000.0, description="CO2 evolution rate"
        ),
        Output(
            name="y_O2_out",
            unit="%",
            lower=0.0,
            upper=100.0,
            description="off-gas O2 mole fraction",
        ),
        Output(
            name="y_CO2_out",
            unit="%",
            lower=0.0,
            upper=100.0,
            description="off-gas CO2 mole fraction",
        ),
        Output(name="V_meas", unit="L", lower=0.0, upper=20.0, description="volume (load cell)"),
        Output(name="X_off", unit="g/L", lower=0.0, upper=200.0, description="offline DCW"),
        Output(name="S_off", unit="g/L", lower=0.0, upper=800.0, description="offline glucose"),
        Output(name="A_off", unit="g/L", lower=0.0, upper=50.0, description="offline acetate"),
        Output(name="P_off", unit="g/L", lower=0.0, upper=100.0, description="offline product"),
        Output(
            name="Q_heat",
            unit="W",
            lower=-100.0,
            upper=10000.0,
            description="metabolic heat",
            derived=True,
        ),
        Output(
            name="P_total",
            unit="g",
            lower=0.0,
            upper=1000.0,
            description="product in the broth (P V)",
            derived=True,
        ),
    ),
    rhs=rhs,
    measure=measure,
    references=(XU, ANANE, ROSSO, VANTRIET, ROELS),
)
