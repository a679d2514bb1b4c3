"""Template families for messages without PHI: realistic near misses.

Each one carries something a naive detector would flag (nine-digit numbers, phone numbers, staff
names with dates, disease and drug names, ICD-10 codes, NPIs, IP addresses, ZIP codes) but no
patient. Values that look like identifiers or clinical content are recorded as ``phi=False`` so
an evaluation can tell a correct type-level detection from a false message-level verdict.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Callable

from tests.corpus import attachments as att
from tests.corpus import identifiers as ids
from tests.corpus import vocab
from tests.corpus.model import Attachment, Ctx, Draft, Provider, Staff
from tests.corpus.phi_families import draft, greet, subj_prefix

# Alternative phrasings, one is picked per message.
_HERE_IS_THE_ROTA_FOR_NEXT_WE = (
    "Here is the rota for next week.",
    "On-call schedule below.",
    "Updated weekend coverage:",
)
_AN_A1C_BELOW_7 = (
    "an A1c below 7%",
    "LDL under 100 mg/dL",
    "blood pressure under 130/80",
)
_CODING_TIP_OF_THE_WEEK = (
    "Coding tip of the week",
    "CDI corner",
    "Documentation tips",
    "Coding update",
)
_QUALITY_DASHBOARD = (
    "Quality dashboard",
    "Population health summary",
    "Monthly metrics",
    "HEDIS snapshot",
)
_GREAT_SPEAKING_WITH_YOU_YEST = (
    "Great speaking with you yesterday about",
    "Following up on our demo of",
    "Just checking in regarding",
)
_I_HAVE_ATTACHED_PRICING_FOR = (
    "I have attached pricing for 3 locations.",
    "Happy to set up a trial.",
    "Our Q3 promotion ends soon.",
)
_PLEASE_ADD_THE_FOLLOWING_PRO = (
    "Please add the following providers to our roster:",
    "Updated provider directory:",
    "New providers effective next month:",
)
_SERVICE_REPORT = (
    "Service report",
    "Field service report",
    "Preventive maintenance completed",
)
_REPLACED_SAMPLE_PROBE = (
    "replaced sample probe",
    "calibrated photometer",
    "firmware updated to 4.2.1",
    "no faults found",
    "replaced reagent pump tubing",
)
_FIRST_HARBOR_BANK = (
    "First Harbor Bank",
    "Granite Trust",
    "Union Valley Bank",
)
_PARKING_LOT_RESURFACING = (
    "Parking lot resurfacing",
    "Elevator maintenance",
    "Fire alarm test",
    "Badge reader upgrade",
)

_XLSX = "vnd.openxmlformats-officedocument.spreadsheetml.sheet"
_DOCX = "vnd.openxmlformats-officedocument.wordprocessingml.document"


def money(c: Ctx, lo: int = 50, hi: int = 25000) -> str:
    return f"${c.randint(lo, hi):,}.{c.randint(0, 99):02d}"


# --------------------------------------------------------------------------- invoices


def invoice_near_miss(c: Ctx) -> Draft:
    vendor, clinic = c.vendor_org(), c.org()
    ar = c.staff(
        vendor, c.choice(["Accounts Receivable", "Billing Coordinator", "Customer Success Manager"])
    )
    ap = c.staff(clinic, c.choice(["Accounts Payable", "Office Manager", "Purchasing"]))
    # Nine-digit numbers in SSN shape: some fail SSN validation, some pass but are labelled.
    if c.maybe():
        inv = ids.fmt_ssn(ids.invalid_ssn_digits(c.rng), c.choice([0, 2]))
    else:
        inv = ids.fmt_ssn(ids.ssn_digits(c.rng), c.choice([0, 2]))
    po = c.choice(
        [
            f"PO-{c.randint(10**5, 10**6)}",
            f"{c.randint(10**8, 10**9 - 1)}",
            f"4500{c.randint(100000, 999999)}",
        ]
    )
    due = c.fdate(c.future(15, 45))
    lines = [
        (
            c.choice(
                [
                    "Nitrile exam gloves, case",
                    "Printer toner, black",
                    "Sharps container 2 gal",
                    "Annual software subscription",
                    "Exam table paper, 12 rolls",
                    "Thermometer probe covers",
                    "On-site support, hours",
                    "Disinfectant wipes, 6 pack",
                    "Label printer ribbons",
                ]
            ),
            c.randint(1, 40),
            c.randint(5, 900),
        )
        for _ in range(c.randint(1, 5))
    ]
    total = sum(q * p for _, q, p in lines)
    table = "\n".join(f"  {d:<36} {q:>3} x ${p:,.2f}" for d, q, p in lines)
    style = c.randint(0, 2)
    if style == 0:
        body = (
            f"{greet(c, ap)}\n\nPlease find below invoice #{inv} for PO {po}.\n\n{table}\n\n"
            f"Total due: ${total:,.2f}\nDue date: {due}\nRemit to: {vendor.name}\n"
            f"{c.oaddress(vendor.address)}\n\n{c.signature(ar, vendor)}"
        )
    elif style == 1:
        body = (
            f"{greet(c, ap)}\n\nOur records show Invoice No. {inv} (PO {po}) is "
            f"{c.randint(15, 90)} days past due. Balance: ${total:,.2f}. Please remit at your "
            f"earliest convenience or call {c.ophone(vendor.phone)}.\n\n"
            f"{c.signature(ar, vendor, short=True)}"
        )
    else:
        body = (
            f"INVOICE\nInvoice # {inv}\nCustomer #: {c.randint(10000, 99999)}\nPO Number: {po}\n"
            f"Invoice date: {c.fdate(c.date)}\nTerms: Net 30\n\n{table}\n\n"
            f"Subtotal ${total:,.2f}\nTax $0.00\nTotal ${total:,.2f}\n\n"
            f"Questions? {c.rec('email', ar.email, False)} / {c.ophone(vendor.phone)}"
        )
    subject = subj_prefix(c) + c.choice(
        [
            f"Invoice {inv}",
            f"Invoice #{inv} from {vendor.name}",
            "Past due invoice",
            f"{'' if po.startswith('PO') else 'PO '}{po} invoice",
            "Your invoice is ready",
        ]
    )
    d = draft(c, subject, body, ar, [ap])
    if c.maybe(0.35):
        rows = [["Description", "Qty", "Unit price"]] + [
            [a, str(b), f"{p:.2f}"] for a, b, p in lines
        ]
        d.attachments.append(
            Attachment(
                f"Invoice_{inv.replace('-', '')}.pdf",
                att.pdf_bytes(
                    f"Invoice {inv}", [f"PO {po}", f"Due {due}"], rows, header=vendor.name
                ),
                "application",
                "pdf",
            )
        )
    return d


# --------------------------------------------------------------------------- meeting dial-in


def meeting_dialin(c: Ctx) -> Draft:
    org = c.org()
    host = c.either(c.staff(org), c.provider(org))
    attendees = [c.staff(org) for _ in range(c.randint(1, 3))]
    conf_id = f"{c.randint(100, 999)} {c.randint(100, 999)} {c.randint(100, 999)}#"
    pin = str(c.randint(1000, 99999999))
    when = c.future(1, 21)
    topic = c.choice(
        [
            "Quality committee",
            "Revenue cycle sync",
            "EHR upgrade planning",
            "Monthly ops review",
            "Credentialing committee",
            "Budget FY26",
            "Infection control huddle",
            "Patient experience working group",
        ]
    )
    d1, d2 = ids.phone_digits(c.rng), ids.phone_digits(c.rng)
    body = (
        f"{topic}\n{c.fdate(when)} {c.time()} ({c.choice(['ET', 'CT', 'PT', 'Eastern'])})\n\n"
        f"{c.choice(['Join the meeting', 'Join online', 'Click here to join the meeting'])}: "
        f"{c.rec('url', f'https://meet.{org.domain}/j/{c.randint(10**9, 10**10)}', False)}\n"
        f"Meeting ID: {c.randint(100, 999)} {c.randint(1000, 9999)} {c.randint(1000, 9999)}\n"
        f"Passcode: {c.randint(100000, 999999)}\n\n"
        f"Or call in (audio only)\n{c.ophone(d1)},,{conf_id.replace(' ', '')}  United States\n"
        f"{c.ophone(d2)}  (toll free)\nPhone conference ID: {conf_id}\n"
        + (f"Participant PIN: {pin}\n" if c.maybe() else "")
        + "\nFind a local number | Reset PIN | Learn more about meetings\n"
    )
    d = draft(
        c, c.choice(["", "Invitation: ", "Updated invitation: "]) + topic, body, host, attendees
    )
    return d


# --------------------------------------------------------------------------- shipping


def shipping_tracking(c: Ctx) -> Draft:
    vendor, clinic = c.vendor_org(), c.org()
    ship = c.staff(vendor, "Order Fulfillment")
    to = c.staff(clinic, "Purchasing")
    carrier = c.choice(["UPS", "FedEx", "USPS", "DHL"])
    if carrier == "UPS":
        trk = (
            "1Z"
            + "".join(c.choice("0123456789ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(6))
            + "".join(c.choice("0123456789") for _ in range(10))
        )
    elif carrier == "FedEx":
        trk = "".join(c.choice("0123456789") for _ in range(12))
    elif carrier == "USPS":
        trk = "9400" + "".join(c.choice("0123456789") for _ in range(18))
    else:
        trk = "".join(c.choice("0123456789") for _ in range(10))
    order = f"{c.randint(10**6, 10**7)}"
    eta = c.fdate(c.future(1, 7))
    body = c.pick(
        lambda: (
            f"{greet(c, to)}\n\nYour order #{order} has shipped via {carrier}.\nTracking number: "
            f"{trk}\nEstimated delivery: {eta}\n\nShip to:\n{clinic.name}\nAttn: Receiving\n"
            f"{c.oaddress(clinic.address, one_line=False)}\n\n"
            f"{c.signature(ship, vendor, short=True)}"
        ),
        lambda: (
            f"Shipment notification\n\nOrder: {order}\nCarrier: {carrier}\nTracking: {trk}\n"
            f"Packages: {c.randint(1, 9)}\nWeight: {c.randint(1, 80)} lb\nDelivery by: {eta}\n"
            f"Track at {c.rec('url', f'https://track.{vendor.domain}/?n={trk}', False)}"
        ),
    )
    return draft(
        c,
        subj_prefix(c)
        + c.choice(
            [
                f"Your order {order} has shipped",
                "Shipping confirmation",
                f"Tracking {trk}",
                "Delivery update",
            ]
        ),
        body,
        ship,
        [to],
    )


# --------------------------------------------------------------------------- staff rota


def staff_rota(c: Ctx) -> Draft:
    org = c.org()
    mgr = c.staff(org, c.choice(["Nurse Manager", "Practice Manager", "Charge Nurse"]))
    team = [c.staff(org) for _ in range(c.randint(3, 6))]
    docs = [c.provider(org) for _ in range(c.randint(1, 3))]
    start = c.future(1, 14)
    days = [start + dt.timedelta(days=i) for i in range(c.randint(3, 7))]
    rows = []
    for day in days:
        s = c.choice(team)
        p = c.choice(docs)
        rows.append(
            f"{day:%a} {c.fdate(day, [1, 3, 9])}: {c.rec('name', f'{s.first} {s.last}', False)}"
            f" (x{s.ext}) / on call {c.rec('name', p.dr, False)}"
        )
    body = (
        f"{c.choice(['Hi all,', 'Team,', 'Good afternoon,'])}\n\n"
        f"{c.choice(_HERE_IS_THE_ROTA_FOR_NEXT_WE)}"
        f"\n\n"
        + "\n".join(rows)
        + f"\n\nAnswering service: {c.ophone(org.phone)}\nSwaps must be approved by "
        f"{c.choice(['me', 'the charge nurse', 'Friday noon'])}.\n\n"
        f"{c.signature(mgr, org, short=True)}"
    )
    d = draft(
        c,
        c.choice(
            [
                "Rota",
                "On-call schedule",
                "Coverage next week",
                "Weekend coverage",
                "Staffing update",
            ]
        ),
        body,
        mgr,
        team[:3],
    )
    if c.maybe(0.3):
        sheet: list[list[object]] = [["Date", "Staff", "Ext", "On call"]]
        for d_ in days:
            s = c.choice(team)
            sheet.append(
                [
                    ids.fmt_date(d_, 0),
                    c.rec("name", f"{s.first} {s.last}", False),
                    s.ext,
                    c.rec("name", c.choice(docs).dr, False),
                ]
            )
        d.attachments.append(
            Attachment("rota.xlsx", att.xlsx_bytes([("Rota", sheet)]), "application", _XLSX)
        )
    return d


# --------------------------------------------------------------------------- newsletter


def health_newsletter(c: Ctx) -> Draft:
    org = c.org()
    comms = c.staff(org, c.choice(["Communications", "Community Outreach", "Wellness Team"]))
    cond_a, cond_b = c.sample(vocab.CONDITIONS, 2)
    paras = [
        f"{c.choice(['This month', 'This season', 'In this issue'])}: understanding "
        f"{c.dx(cond_a, False)}. Around one in {c.randint(3, 12)} adults is affected. "
        f"Common treatments include {c.cond_med(cond_a, False)}, along with diet and exercise.",
        f"Ask your doctor whether a {c.choice(['screening', 'flu shot', 'blood pressure check'])} "
        f"is right for you. Many people with {c.dx(cond_b, False)} benefit from regular "
        f"monitoring; a typical target is {c.choice(_AN_A1C_BELOW_7)}.",
        f"Free {c.choice(['diabetes', 'heart health', 'mindfulness', 'smoking cessation'])} "
        f"class on {c.fdate(c.future(5, 40))}. Register at "
        f"{c.rec('url', f'https://www.{org.domain}/classes', False)} or call "
        f"{c.ophone(org.phone)}.",
    ]
    body = (
        f"{org.name} Health Matters\n\n"
        + "\n\n".join(c.shuffled(paras[:2]) + paras[2:])
        + (
            f"\n\nYou are receiving this because you subscribed at {org.domain}. Unsubscribe: "
            f"https://www.{org.domain}/unsubscribe\n{c.oaddress(org.address, True)}"
        )
    )
    d = Draft(
        subject=c.choice(["Health Matters: ", "Wellness newsletter: ", "Your health news - "])
        + c.choice(
            [
                "spring issue",
                "managing chronic conditions",
                "heart month",
                "staying active",
                "flu season",
            ]
        ),
        text=body,
        sender=(f"{org.name}", f"newsletter@{org.domain}"),
        to=[(f"{comms.first} {comms.last}", comms.email)],
    )
    if c.maybe(0.2):
        d.attachments.append(
            Attachment(
                "newsletter.pdf", att.pdf_bytes("Health Matters", paras), "application", "pdf"
            )
        )
    return d


# --------------------------------------------------------------------------- coding tips


def coding_tip(c: Ctx) -> Draft:
    org = c.org()
    coder = c.staff(org, c.choice(["Coding Educator", "CDI Specialist", "HIM Manager"]))
    to = [c.provider(org), c.provider(org)]
    tips = []
    for _ in range(c.randint(2, 4)):
        code, desc = c.choice(vocab.ICD10)
        shown = c.icd(code, False)
        tips.append(
            c.choice(
                [
                    f"Use {shown} for {desc}.",
                    f"{shown} ({desc}) is frequently under-documented - specify acuity and "
                    "laterality where applicable.",
                    f"Remember: {desc} codes to {shown}.",
                ]
            )
        )
    cpt, desc = c.choice(vocab.CPT)
    tips.append(
        f"For {desc}, bill CPT {c.rec('cpt', cpt, False)} only when documentation supports it."
    )
    if c.maybe():
        tips.append(f"Document the dose, e.g. {c.med(phi=False)}, on every refill note.")
    body = (
        f"{c.choice(_CODING_TIP_OF_THE_WEEK)}"
        f"\n\n"
        + "\n".join(f"- {t}" for t in c.shuffled(tips))
        + f"\n\nQuestions? Reply to this email or call x{coder.ext}.\n\n"
        f"{c.signature(coder, org, short=True)}"
    )
    return draft(
        c,
        c.choice(["Coding tip of the week", "CDI corner", "ICD-10 reminder", "Documentation tip"]),
        body,
        coder,
        to,
    )


# --------------------------------------------------------------------------- dashboards


def aggregate_dashboard(c: Ctx) -> Draft:
    org = c.org()
    analyst = c.staff(
        org, c.choice(["Quality Analyst", "Population Health Analyst", "Data Analyst"])
    )
    to: list[Staff | Provider] = [c.provider(org), c.staff(org)]
    metrics = [
        f"{c.randint(20, 400)} patients with HbA1c > 9% this quarter "
        f"({c.randint(5, 25)}% of the diabetic panel)",
        f"{c.randint(40, 95)}% of hypertensive patients at BP < 140/90",
        f"{c.randint(50, 900)} ED visits, {c.randint(5, 20)}% 30-day readmission rate",
        f"Colorectal screening rate {c.randint(40, 85)}% (goal 72%)",
        "ON_DRUG",
        f"Average eGFR decline in CKD cohort: {c.randint(1, 6)} mL/min/yr",
        f"{c.randint(100, 3000)} flu vaccines given ({c.randint(30, 70)}% of eligible)",
        f"Depression screening (PHQ-9) completion {c.randint(40, 95)}%",
    ]
    chosen = [
        f"{c.randint(10, 300)} patients on {c.med(phi=False, dose=False)} overdue for labs"
        if m == "ON_DRUG"
        else m
        for m in c.sample(metrics, c.randint(3, 6))
    ]
    body = (
        f"{c.choice(_QUALITY_DASHBOARD)}"
        f" - {c.choice(['Q1', 'Q2', 'Q3', 'Q4'])} {c.date.year}\n\n"
        + "\n".join(f"* {m}" for m in chosen)
        + "\n\nAll figures are aggregate and de-identified; cells under 11 are suppressed.\n\n"
        + c.signature(analyst, org, short=True)
    )
    d = draft(
        c,
        c.choice(
            ["Quality dashboard", "Monthly metrics", "Population health update", "HEDIS progress"]
        ),
        body,
        analyst,
        to,
    )
    if c.maybe(0.35):
        rows: list[list[object]] = [["Measure", "Numerator", "Denominator", "Rate"]]
        for m in [
            "Diabetes A1c control",
            "BP control",
            "Breast cancer screening",
            "Statin therapy",
            "Depression screening",
        ]:
            n, dd = c.randint(50, 900), c.randint(900, 2000)
            rows.append([m, n, dd, f"{n / dd:.1%}"])
        if c.maybe():
            d.attachments.append(
                Attachment("dashboard.xlsx", att.xlsx_bytes([("Q", rows)]), "application", _XLSX)
            )
        else:
            d.attachments.append(
                Attachment(
                    "measures.csv",
                    att.csv_bytes([[str(x) for x in r] for r in rows]),
                    "text",
                    "csv",
                )
            )
    return d


# --------------------------------------------------------------------------- IT notices


def it_notice(c: Ctx) -> Draft:
    org = c.org()
    it = c.staff(org, c.choice(["IT Service Desk", "Network Engineer", "Systems Administrator"]))

    def ips(k: int) -> list[str]:
        return [
            c.rec("ip", c.choice([ids.private_ip, ids.public_ip])(c.rng), False) for _ in range(k)
        ]

    when = c.future(1, 10)
    body = c.pick(
        lambda: (
            f"Scheduled maintenance: {c.fdate(when)} {c.time()} - {c.time()}\n\n"
            f"The EHR application servers ({', '.join(ips(c.randint(1, 4)))}) will be patched. "
            "Downtime procedures apply. Status page: "
            f"{c.rec('url', f'https://status.{org.domain}/', False)}\n\n"
            f"{c.signature(it, org, short=True)}"
        ),
        lambda: (
            f"Security notice: we are blocking traffic from {ips(1)[0]} after repeated failed VPN "
            f"logins. If you use a home static IP, register it at "
            f"{c.rec('url', f'https://it.{org.domain}/vpn', False)}.\n\n"
            f"{c.signature(it, org)}"
        ),
        lambda: (
            f"Printer migration: new print server is {ips(1)[0]} "
            f"(\\\\print{c.randint(1, 9)}.{org.domain}). Ticket INC{c.randint(10**6, 10**7)}. "
            f"Call the service desk at {c.ophone(org.phone)} ext. {it.ext}.\n\n{it.first}"
        ),
    )
    return draft(
        c,
        subj_prefix(c)
        + c.choice(
            [
                "Scheduled maintenance",
                "IT notice",
                "Security notice",
                "Printer migration",
                "Network change",
            ]
        ),
        body,
        it,
        [c.staff(org) for _ in range(2)],
    )


# --------------------------------------------------------------------------- vendor emails


def vendor_signature(c: Ctx) -> Draft:
    vendor, clinic = c.vendor_org(), c.org()
    rep = c.staff(
        vendor,
        c.choice(
            [
                "Account Executive",
                "Sales Representative",
                "Territory Manager",
                "Customer Success Manager",
            ]
        ),
    )
    to = c.staff(clinic, c.choice(["Practice Manager", "Purchasing", "Office Manager"]))
    product = c.choice(
        [
            "patient check-in kiosks",
            "our revenue cycle platform",
            "the new exam tables",
            "telehealth carts",
            "document scanning",
            "managed print services",
            "our answering service",
        ]
    )
    body = (
        f"{greet(c, to)}\n\n{c.choice(_GREAT_SPEAKING_WITH_YOU_YEST)}"
        f" {product}. {c.choice(_I_HAVE_ATTACHED_PRICING_FOR)}"
        f" Would {c.fdate(c.future(2, 12), [5, 3])} work for a call?\n\n"
        f"{rep.first} {rep.last}\n{rep.role}\n{vendor.name}\n"
        f"{c.oaddress(vendor.address, one_line=False)}\n"
        f"Direct: {c.ophone(rep.phone)} | Main: {c.ophone(vendor.phone)}\n"
        f"{c.rec('url', f'https://www.{vendor.domain}', False)}"
    )
    c.rec("name", f"{rep.first} {rep.last}", False)
    return draft(
        c,
        subj_prefix(c)
        + c.choice(["Following up", "Quick question", f"{vendor.name} - next steps", "Pricing"]),
        body,
        rep,
        [to],
    )


# --------------------------------------------------------------------------- provider directory


def provider_directory(c: Ctx) -> Draft:
    org = c.org()
    frm = c.staff(
        org, c.choice(["Credentialing Specialist", "Provider Relations", "Medical Staff Office"])
    )
    to = c.staff(c.org(c.choice(["payer.example", "healthplan.test"])))
    provs = [c.provider(org) for _ in range(c.randint(2, 8))]
    style = c.randint(0, 1)
    if style == 0:
        lines = [
            f"{c.rec('name', p.dr, False)}, {p.specialty} - NPI {c.rec('npi', p.npi, False)}"
            + (f", DEA {c.rec('dea', p.dea, False)}" if c.maybe(0.3) else "")
            for p in provs
        ]
        body = (
            f"{greet(c, to)}\n\n{c.choice(_PLEASE_ADD_THE_FOLLOWING_PRO)}"
            f"\n\n"
            + "\n".join(lines)
            + f"\n\nPractice location: {c.oaddress(org.address, True)}\nPhone "
            f"{c.ophone(org.phone)} Fax {c.ophone(org.fax, 'fax')}\n\n"
            f"{c.signature(frm, org, short=True)}"
        )
        return draft(
            c,
            c.choice(["Provider roster update", "Directory update", "New providers"]),
            body,
            frm,
            [to],
        )
    rows = "\n".join(
        f"<tr><td>{html.escape(c.rec('name', p.dr, False))}</td><td>{p.specialty}</td>"
        f"<td>{c.rec('npi', p.npi, False)}</td><td>{c.ophone(org.phone)}</td></tr>"
        for p in provs
    )
    page = (
        f"<html><body><p>{greet(c, to)}</p><p>Our current directory:</p>"
        f"<table border=1><tr><th>Provider</th><th>Specialty</th><th>NPI</th>"
        f"<th>Phone</th></tr>\n{rows}\n</table><p>{frm.first}</p></body></html>"
    )
    return draft(c, "Provider directory", None, frm, [to], html=page, body_mode="html")


# --------------------------------------------------------------------------- marketing


def marketing(c: Ctx) -> Draft:
    vendor = c.vendor_org()
    to = c.staff(c.org())
    offer = c.choice(
        [
            f"{c.randint(10, 40)}% off exam room supplies",
            "a free webinar on reducing claim denials",
            "our new telehealth bundle",
            "free shipping on orders over $250",
            "a complimentary practice assessment",
        ]
    )
    body = (
        f"Hi {to.first},\n\nFor a limited time, get {offer}. Trusted by over "
        f"{c.randint(2, 40)},000 practices nationwide.\n\nUse code "
        f"{c.choice(['SPRING', 'CLINIC', 'SAVE', 'HEALTH'])}{c.randint(10, 99)} by "
        f"{c.fdate(c.future(3, 30), [5, 4])}.\n\nShop now: "
        f"{c.rec('url', f'https://www.{vendor.domain}/offers?utm_source=email', False)}\n"
        f"Call {c.ophone(vendor.phone)}\n\n{vendor.name} | {c.oaddress(vendor.address, True)}\n"
        "Unsubscribe | Manage preferences"
    )
    return Draft(
        subject=c.choice(["Last chance: ", "Exclusive offer: ", "", "[Webinar] "]) + offer,
        text=body,
        sender=(vendor.name, f"offers@{vendor.domain}"),
        to=[(f"{to.first} {to.last}", to.email)],
        body_mode=c.choice(["auto", "html"]),
    )


# --------------------------------------------------------------------------- HR


def hr_notice(c: Ctx) -> Draft:
    org = c.org()
    hr = c.staff(org, c.choice(["HR Generalist", "Benefits Administrator", "People Operations"]))
    start = c.future(3, 30)
    end = start + dt.timedelta(days=c.randint(7, 21))
    subject, body = c.pick(
        lambda: (
            c.choice(["Open enrollment", "Benefits open enrollment"]),
            f"Open enrollment runs from {c.fdate(start)} through {c.fdate(end)}. Changes take "
            f"effect {c.fdate(dt.date(c.date.year + 1, 1, 1))}. Log in to the benefits portal at "
            f"{c.rec('url', f'https://benefits.{org.domain}', False)}. Dependents must be "
            "verified with documentation.\n\n" + c.signature(hr, org),
        ),
        lambda: (
            c.choice(["Training due", "HR reminder"]),
            f"Reminder: annual HIPAA and compliance training is due by {c.fdate(end)}. "
            f"Employees hired after {c.fdate(c.recent(200))} must also complete the new-hire "
            "module. Completion is tracked by employee ID.\n\n" + c.signature(hr, org, short=True),
        ),
        lambda: (
            "Payroll schedule change",
            f"Payroll will be processed early because of the holiday: pay date "
            f"{c.fdate(start)}, timesheets due {c.fdate(start - dt.timedelta(days=3))} by noon."
            f"\n\n{c.signature(hr, org, short=True)}",
        ),
    )
    d = draft(c, subject, body, hr, [c.staff(org)])
    if c.maybe(0.25):
        d.attachments.append(
            Attachment(
                "Benefits_Guide.docx",
                att.docx_bytes(
                    "Benefits Guide",
                    [
                        "Medical, dental and vision plans are available to all "
                        "full-time employees.",
                        f"Enrollment closes {c.fdate(end)}.",
                    ],
                ),
                "application",
                _DOCX,
            )
        )
    return d


# --------------------------------------------------------------------------- conferences


def conference_announcement(c: Ctx) -> Draft:
    events = c.vendor_org()
    start = c.future(20, 200)
    venue = c.address()
    topic = c.choice(
        [
            "Value-Based Care Summit",
            "Regional Diabetes Symposium",
            "Health IT Interoperability Forum",
            "Nursing Leadership Conference",
            "Behavioral Health Integration Workshop",
            "Revenue Cycle Boot Camp",
        ]
    )
    speaker = c.provider()
    style = c.randint(0, ids.DATE_STYLES - 1)
    body = (
        f"{topic} {start.year}\n{ids.fmt_date(start, style)} - "
        f"{ids.fmt_date(start + dt.timedelta(days=2), style)}\n"
        f"{venue.city}, {venue.state}\n\nKeynote: {c.rec('name', speaker.dr, False)} on "
        f"{c.choice(['managing', 'new guidelines for', 'closing care gaps in'])} "
        f"{c.dx(c.choice(vocab.CONDITIONS), False)}.\n\nEarly registration ends "
        f"{c.fdate(start - dt.timedelta(days=30))}. Venue: {c.oaddress(venue, True)}.\n"
        f"Register: {c.rec('url', f'https://{events.domain}/register', False)}\n"
        f"CME credits available."
    )
    return Draft(
        subject=f"{topic}: registration open",
        text=body,
        sender=(events.name, f"events@{events.domain}"),
        to=[(f"{x.first} {x.last}", x.email) for x in [c.staff(c.org())]],
    )


# --------------------------------------------------------------------------- equipment service


def equipment_service(c: Ctx) -> Draft:
    vendor, clinic = c.vendor_org(), c.org()
    eng = c.staff(vendor, "Field Service Engineer")
    to = c.staff(
        clinic, c.choice(["Lab Supervisor", "Biomedical Engineering", "Facilities Manager"])
    )
    analyzer = c.choice(vocab.LAB_ANALYZERS)
    sn = c.rec("device_serial", ids.device_serial(c.rng), False)
    wo = f"WO-{c.randint(10**5, 10**6)}"
    body = (
        f"{c.choice(_SERVICE_REPORT)}"
        f"\n\nInstrument: {analyzer}\nSerial No.: {sn}\nWork order: {wo}\n"
        f"Date of service: {c.fdate(c.recent(10))}\n"
        f"Findings: {c.choice(_REPLACED_SAMPLE_PROBE)}"
        f"\nQC: {c.choice(['passed all levels', 'level 2 rerun, passed'])}\n"
        f"Next PM due: {c.fdate(c.future(90, 180))}\n\n{c.signature(eng, vendor)}"
    )
    d = draft(
        c,
        subj_prefix(c) + c.choice([f"Service report {wo}", "PM completed", f"{analyzer} service"]),
        body,
        eng,
        [to],
    )
    if c.maybe(0.35):
        d.attachments.append(
            Attachment(
                f"{wo}.pdf",
                att.pdf_bytes(
                    "Field Service Report", [f"Instrument {analyzer}", f"Serial {sn}", "Status: OK"]
                ),
                "application",
                "pdf",
            )
        )
    return d


# --------------------------------------------------------------------------- birthday lunch


def birthday_lunch(c: Ctx) -> Draft:
    org = c.org()
    organiser = c.staff(org)
    bday = c.staff(org)
    team = [c.staff(org) for _ in range(c.randint(2, 4))]
    day = c.future(1, 10)
    name = c.rec("name", c.choice([bday.first, f"{bday.first} {bday.last}"]), False)
    body = c.pick(
        lambda: (
            f"Hi everyone,\n\n{name}'s birthday is {c.fdate(day, [5, 3])}! We're doing lunch in "
            f"the break room at {c.choice(['12:00', '12:30', '1 PM'])}. Please sign the card at "
            f"the front desk and chip in for the cake if you can.\n\n{organiser.first}"
        ),
        lambda: (
            f"Surprise birthday lunch for {name} on {c.fdate(day)} - "
            f"{c.choice(['pizza', 'tacos', 'sandwiches'])} from the place on {org.address.city} "
            f"Ave. Don't tell {c.choice(['her', 'him', 'them'])}!\n\nRSVP to me by "
            f"{c.fdate(day - dt.timedelta(days=1), [3, 5])}."
        ),
        lambda: (
            f"Happy birthday {name}! Cake at 3 pm today ({c.fdate(c.date, [1, 5])}) in the "
            f"{c.choice(['2nd floor', 'staff lounge', 'conference room B'])}."
        ),
    )
    return draft(
        c,
        c.choice(
            [
                "Birthday lunch!",
                f"Happy birthday {bday.first}",
                "Cake today",
                "Shhh - surprise lunch",
            ]
        ),
        body,
        organiser,
        team,
    )


# --------------------------------------------------------------------------- compliance reminder


def compliance_reminder(c: Ctx) -> Draft:
    org = c.org()
    po = c.staff(org, c.choice(["Privacy Officer", "Compliance Officer", "HIPAA Security Officer"]))
    body = (
        f"{c.choice(['Privacy reminder', 'Compliance tip', 'HIPAA minute'])}\n\n"
        "Never send a patient's name together with a diagnosis, date of birth, MRN, SSN or "
        "Medicare number (MBI) in an unencrypted email. Use [secure] in the subject line when "
        "you must send PHI outside the organisation. Placeholders such as XXX-XX-XXXX or "
        "MRN ######## are fine in templates.\n\n"
        f"Report suspected incidents to {c.rec('email', po.email, False)} or "
        f"{c.ophone(org.phone)} within 24 hours. Training deadline: {c.fdate(c.future(5, 60))}."
        f"\n\n{c.signature(po, org, short=True)}"
    )
    return draft(
        c,
        c.choice(["Privacy reminder", "HIPAA minute", "Secure email reminder", "Compliance tip"]),
        body,
        po,
        [c.staff(org), c.staff(org)],
    )


# --------------------------------------------------------------------------- formulary


def formulary_update(c: Ctx) -> Draft:
    org = c.org(c.choice(["pharmacy.example", "healthplan.test", "hospital.example"]))
    rph = c.staff(org, c.choice(["Clinical Pharmacist", "P&T Committee", "Pharmacy Director"]))
    items = []
    for _ in range(c.randint(3, 6)):
        items.append(
            c.pick(
                lambda: f"ADDED: {c.med(phi=False)}",
                lambda: (
                    f"Tier change: {c.med(phi=False, dose=False)} moves to tier {c.randint(1, 4)}"
                ),
                lambda: f"Prior authorization now required for {c.med(phi=False, dose=False)}",
                lambda: f"Preferred: {c.med(phi=False)} over {c.med(phi=False, dose=False)}",
            )
        )
    body = (
        f"{c.choice(['Formulary update', 'P&T committee decisions', 'Pharmacy bulletin'])}"
        f" effective {c.fdate(c.future(5, 40))}\n\n"
        + "\n".join(f"- {i}" for i in items)
        + f"\n\nFull formulary: {c.rec('url', f'https://{org.domain}/formulary.pdf', False)}"
        + f"\n\n{c.signature(rph, org, short=True)}"
    )
    return draft(
        c,
        c.choice(["Formulary update", "P&T decisions", "Pharmacy bulletin"]),
        body,
        rph,
        [c.provider(org), c.staff(org)],
    )


# --------------------------------------------------------------------------- supply order


def supply_order(c: Ctx) -> Draft:
    vendor, clinic = c.vendor_org(), c.org()
    buyer = c.staff(clinic, "Purchasing")
    rep = c.staff(vendor, "Customer Service")
    rows = [["Item #", "Description", "Lot", "Expiry", "Qty", "NDC"]]
    for _ in range(c.randint(3, 12)):
        rows.append(
            [
                f"{c.randint(100000, 999999)}",
                c.choice(
                    [
                        "Syringe 3 mL luer lock",
                        "Gauze 4x4 sterile",
                        "Alcohol prep pads",
                        "Influenza vaccine 0.5 mL",
                        "Lidocaine 1% 20 mL",
                        "Urine cups",
                        "Exam gloves M",
                        "Specimen bags",
                    ]
                ),
                f"{c.choice('ABCDEFGHKLMN')}{c.randint(10000, 99999)}",
                ids.fmt_date(c.future(100, 900), c.choice([0, 2])),
                str(c.randint(1, 50)),
                f"{c.randint(10000, 99999)}-{c.randint(100, 999)}-{c.randint(10, 99)}",
            ]
        )
    body = (
        f"{greet(c, rep)}\n\nPlease process PO {c.randint(10**8, 10**9 - 1)} - details in the "
        f"attached sheet. Ship to {clinic.name}, {c.oaddress(clinic.address, True)}.\n\n"
        f"{c.signature(buyer, clinic, short=True)}"
    )
    d = draft(
        c,
        subj_prefix(c) + c.choice(["Purchase order", "Supply order", "Reorder"]),
        body,
        buyer,
        [rep],
    )
    data = att.csv_bytes(rows)
    if c.maybe(0.35):
        d.attachments.append(
            Attachment("order.zip", att.zip_bytes([("order.csv", data)]), "application", "zip")
        )
    else:
        d.attachments.append(Attachment("order.csv", data, "text", "csv"))
    return d


# --------------------------------------------------------------------------- vendor payment


def vendor_payment(c: Ctx) -> Draft:
    vendor, clinic = c.vendor_org(), c.org()
    ar = c.staff(vendor, "Accounts Receivable")
    ap = c.staff(clinic, "Accounts Payable")
    routing = c.rec("routing", ids.aba(c.rng), False)
    acct = c.rec("account", ids.bank_account(c.rng), False)
    body = (
        f"{greet(c, ap)}\n\nPlease note our remittance details for ACH payments to "
        f"{vendor.name}:\nBank: {c.choice(_FIRST_HARBOR_BANK)}"
        f"\nABA routing: {routing}\nAccount: {acct}\nRemittance advice to "
        f"{c.rec('email', f'ar@{vendor.domain}', False)}\n\nA signed W-9 is on file with your "
        f"purchasing team. Please call {c.ophone(vendor.phone)} to verify before updating.\n\n"
        f"{c.signature(ar, vendor)}"
    )
    return draft(
        c,
        subj_prefix(c)
        + c.choice(["Updated remittance details", "ACH information", "Vendor banking update"]),
        body,
        ar,
        [ap],
    )


# --------------------------------------------------------------------------- research


def trial_recruitment(c: Ctx) -> Draft:
    org = c.org(c.choice(["hospital.example", "example.org"]))
    coord = c.staff(org, "Research Coordinator")
    cond = c.choice(vocab.CONDITIONS)
    pi = c.provider(org, cond.clinic)
    body = (
        f"{greet(c, pi)}\n\nWe are recruiting for a study of "
        f"{c.dx(cond, False)}. Inclusion: adults {c.randint(18, 40)}-{c.randint(65, 80)} "
        f"years with {c.cond_lab(cond, False)} or higher, on stable "
        f"{c.cond_med(cond, False)} for 3 months. Exclusion: "
        f"{c.dx(c.choice(vocab.CONDITIONS), False)}, pregnancy.\n\n"
        f"If you have patients who may qualify, please refer them to "
        f"{c.ophone(org.phone)}. IRB #{c.randint(2019, 2025)}-{c.randint(100, 999)}.\n\n"
        f"{c.signature(coord, org, short=True)}"
    )
    return draft(
        c,
        c.choice(["Study recruitment", "Referrals welcome: new trial", "Research opportunity"]),
        body,
        coord,
        [pi],
    )


def case_conference(c: Ctx) -> Draft:
    """A de-identified teaching case: clinical content, no person."""
    org = c.org(c.choice(["hospital.example", "stmarys.example"]))
    chief = c.provider(org)
    cond = c.choice(vocab.CONDITIONS)
    age = c.randint(20, 85)
    body = (
        f"Grand rounds {c.fdate(c.future(2, 20), [5])} at noon\n\n"
        f"Case: a {age}-year-old {c.choice(['man', 'woman'])} with "
        f"{c.dx(cond, False)} presented with "
        f"{c.choice(['worsening dyspnea', 'new confusion', 'recurrent falls', 'weight loss'])}. "
        f"Labs showed {c.cond_lab(cond, False)}. We will discuss management, including "
        f"{c.cond_med(cond, False)}.\n\nPresenter: {c.rec('name', chief.dr, False)}\n"
        f"Location: {c.choice(['Auditorium A', 'Conference Center', 'via video'])}\n"
        f"CME: 1.0 AMA PRA Category 1 Credit"
    )
    return draft(
        c,
        c.choice(["Grand rounds", "Case conference", "M&M this week"]),
        body,
        chief,
        [c.staff(org), c.provider(org)],
    )


# --------------------------------------------------------------------------- misc admin


def forwarded_admin(c: Ctx) -> Draft:
    org = c.org()
    a, b, d = c.staff(org), c.staff(org), c.provider(org)
    when = c.future(1, 20)
    inner = (
        f"{greet(c, a)}\n\n{c.rec('name', d.dr, False)} asked to move the "
        f"{c.choice(['department meeting', 'budget review', 'site visit', 'vendor demo'])} to "
        f"{c.fdate(when)} at {c.time()}. Room {c.randint(100, 499)} is booked.\n\n"
        f"{b.first}"
    )
    quoted = "\n".join("> " + ln if ln else ">" for ln in inner.split("\n"))
    body = (
        f"{c.choice(['Works for me.', 'See below - can you update the calendar?', 'FYI'])}\n\n"
        f"On {c.fdate(c.date, [4, 5])}, {b.first} {b.last} <{b.email}> wrote:\n{quoted}"
    )
    return draft(
        c,
        c.choice(["RE: ", "FW: "]) + c.choice(["meeting change", "schedule", "room booking"]),
        body,
        a,
        [b],
        reply=True,
    )


def job_posting(c: Ctx) -> Draft:
    org = c.org()
    hr = c.staff(org, "Talent Acquisition")
    role = c.choice(
        [
            "Registered Nurse - Cardiology",
            "Medical Assistant",
            "Billing Specialist",
            "Clinical Pharmacist",
            "Physical Therapist",
            "Front Desk Coordinator",
        ]
    )
    body = (
        f"We're hiring: {role}\n\nLocation: {c.oaddress(org.address, True)}\n"
        f"Start date: {c.fdate(c.future(20, 90))}\nSchedule: "
        f"{c.choice(['M-F 8-5', '3x12s', 'part-time evenings'])}\nApply by "
        f"{c.fdate(c.future(5, 30))} at {c.rec('url', f'https://careers.{org.domain}', False)}"
        f" or call {c.ophone(org.phone)}.\n\nReferral bonus: ${c.choice([500, 1000, 2500])}."
    )
    return draft(c, f"Job posting: {role}", body, hr, [c.staff(org)])


def facilities_notice(c: Ctx) -> Draft:
    org = c.org()
    fac = c.staff(org, "Facilities Manager")
    day = c.future(1, 15)
    body = (
        f"{c.choice(_PARKING_LOT_RESURFACING)}"
        f" on {c.fdate(day)}. Staff should use the {c.choice(['north', 'east', 'garage'])} entrance"
        f" at {c.oaddress(c.address(), True)}. Badge numbers starting with "
        f"{c.randint(100, 999)} must be re-registered. Questions: {c.ophone(org.phone)} x"
        f"{fac.ext}.\n\n{c.signature(fac, org, short=True)}"
    )
    return draft(
        c,
        c.choice(["Facilities notice", "Parking update", "Building maintenance"]),
        body,
        fac,
        [c.staff(org), c.staff(org)],
    )


def policy_document(c: Ctx) -> Draft:
    org = c.org()
    q = c.staff(org, c.choice(["Quality Manager", "Policy Coordinator"]))
    cond = c.choice(vocab.CONDITIONS)
    title = c.choice(
        ["Management Protocol", "Care Guideline", "Clinical Pathway", "Order Set Guidance"]
    )
    title = f"{cond.terms[0][0].upper()}{cond.terms[0][1:]} {title}"
    paras = [
        f"Purpose: standardise care for adult patients with {c.dx(cond, False)}.",
        f"Procedure: notify the prescriber for {c.cond_lab(cond, False)} or worse; consider "
        f"{c.cond_med(cond, False)} per prescriber order.",
        f"Effective {c.fdate(c.future(5, 40))}. Reviewed annually by the P&T committee.",
    ]
    body = (
        f"{c.choice(['Hi all,', 'Team,'])}\n\nThe revised {title} is attached for review. "
        f"Comments by {c.fdate(c.future(3, 14))} please.\n\n"
        f"{c.signature(q, org, short=True)}"
    )
    d = draft(c, f"Policy review: {title}", body, q, [c.staff(org), c.provider(org)])
    if c.maybe():
        d.attachments.append(
            Attachment(
                f"{title.replace(' ', '_')}.docx",
                att.docx_bytes(title, paras),
                "application",
                _DOCX,
            )
        )
    else:
        d.attachments.append(
            Attachment(
                f"{title.replace(' ', '_')}.pdf", att.pdf_bytes(title, paras), "application", "pdf"
            )
        )
    return d


# (category, function, weight)
CLEAN_FAMILIES: tuple[tuple[str, Callable[[Ctx], Draft], float], ...] = (
    ("invoice_near_miss", invoice_near_miss, 3),
    ("meeting_dialin", meeting_dialin, 2),
    ("shipping_tracking", shipping_tracking, 2),
    ("staff_rota", staff_rota, 2),
    ("health_newsletter", health_newsletter, 2),
    ("coding_tip", coding_tip, 2),
    ("aggregate_dashboard", aggregate_dashboard, 2),
    ("it_notice", it_notice, 2),
    ("vendor_signature", vendor_signature, 2),
    ("provider_directory", provider_directory, 2),
    ("marketing", marketing, 1.5),
    ("hr_notice", hr_notice, 1.5),
    ("conference_announcement", conference_announcement, 1.5),
    ("equipment_service", equipment_service, 1.5),
    ("birthday_lunch", birthday_lunch, 1.5),
    ("compliance_reminder", compliance_reminder, 1),
    ("formulary_update", formulary_update, 1.5),
    ("supply_order", supply_order, 1.5),
    ("vendor_payment", vendor_payment, 1),
    ("trial_recruitment", trial_recruitment, 1),
    ("case_conference", case_conference, 1),
    ("forwarded_admin", forwarded_admin, 1.5),
    ("job_posting", job_posting, 1),
    ("facilities_notice", facilities_notice, 1),
    ("policy_document", policy_document, 1.5),
)
