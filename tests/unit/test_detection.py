"""The PHI decision on realistic text: names (patients vs clinicians, correspondents, streets),
table context (column headers, row labels), the decision rules, and hand-written messages
that must or must not be PHI (phrased independently of the synthetic corpus generator)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.rules import builtin
from gateway.rules.builtin import WORDLISTS, validators
from gateway.rules.engine import (
    ADDRESSEE,
    CLINICAL,
    CONTEXT,
    IDENTIFIER,
    NAME,
    PERSON,
    SECOND_PERSON,
    Chunk,
    Hit,
    _Tables,
    decide,
    name_tokens,
    normalise_label,
)
from gateway.rules.ruleset import build_engine, load_ruleset

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    rs = load_ruleset(ROOT / "conf" / "rules", WORDLISTS)
    return build_engine(rs, validators(), tmp_path_factory.mktemp("hs-cache"))


def _analyse(engine, body: str, subject: str = "", headers: dict[str, str] | None = None):
    chunks = [Chunk("subject", "subject", subject)] if subject else []
    for field, names in (headers or {}).items():
        chunks.append(Chunk(f"header {field}", "header", names))
    chunks.append(Chunk("body[0] text/plain", "body", body))
    return engine.analyse(chunks)


# --------------------------------------------------------------------------- messages

NOT_PHI = {
    "newsletter to a named subscriber": """Dear Jane,

February is Heart Health Month. High blood pressure affects nearly half of adults. Ask your
doctor how to lower your risk, and know your numbers: your A1c should be 7% or less if you
have diabetes.

You are receiving this newsletter because you signed up at our website. Unsubscribe
Riverside Community Health, 200 Main Street, Springfield, IL 62701""",
    "aggregate dashboard": """Q3 diabetes dashboard
- 412 patients with an A1c above 9% (14% of the registry)
- Median eGFR in the CKD cohort fell 2 mL/min/yr
- 68% of patients on metformin had a B12 level checked
All figures are de-identified aggregates.""",
    "coding tip signed by a CDI specialist": """Coding corner: code E11.22 for type 2 diabetes
with diabetic CKD, and add N18.3x for the stage. Do not use R73.9 when the provider documents
diabetes. Questions? Ask Maria Lopez, CDI Specialist.""",
    "on-call rota": """On-call rota, week of 3/10
Mon 3/10  Dr. Alan Grant / Sarah Connor, RN  ext 4410
Tue 3/11  Dr. Ellie Sattler / Tom Hagen  ext 4411
Wed 3/12  Dr. Ian Malcolm / Lisa Park  ext 4412
Pager: (312) 555-0199""",
    "vendor invoice": """INVOICE 2024-0415
Bill to: Lakeside Family Medicine, Attn: Karen Miller
Customer account: 88812345
Item: Nitrile gloves (case of 10)  Qty 4  $212.00
Remit to: MedSupply Co., PO Box 4410, Dallas, TX 75201. Questions: billing@medsupply.example""",
    "provider directory": """Provider directory update

Rachel Green, MD - Endocrinology - NPI 1234567893 - (617) 555-2300
Ross Geller, DO - Family Medicine - (617) 555-2301
Monica Geller, NP, Diabetes Educator - (617) 555-2302
All providers accept new patients.""",
    "webinar follow-up with a signature": """Thanks for joining yesterday's webinar on heart
failure readmissions. Slides from Dr. Priya Shah are attached. Our next session covers COPD.

Best,
Michael Scott
Quality Improvement Coordinator
Scranton Medical Group
(570) 555-0100""",
    "trial recruitment naming the coordinator": """We are enrolling adults with type 2 diabetes
on metformin in the GLOW trial. If you have eligible patients, please contact our study
coordinator, Angela Martin, at (555) 212-3434 or glow@research.example. IRB #2024-117.""",
    "IT notice": """Reminder: your password expires in 5 days. Log in at
https://portal.example.org from 10.20.30.40 or call the service desk at (800) 555-0123.""",
    "formulary update": """Formulary update effective 7/1: apixaban 5 mg BID preferred over
rivaroxaban; insulin glargine biosimilar now tier 2. Prior authorization required for
semaglutide.""",
    "teaching case": """Grand rounds Friday: a 67-year-old woman with new-onset heart failure
and an EF of 25%. Presenter: Dr. Meredith Grey. CME credit available.""",
    "forwarded scheduling note": """See below.

On Mon, Mar 3, 2025, Pam Beesly <pbeesly@clinic.example> wrote:
> Dr. Halpert asked to move the budget review to Thursday at 2 pm.""",
    "vendor remittance details": """Please note our remittance details for ACH payments to
Ross, Grant and Wolfe LLC: ABA routing 021000021, account 123456789. Call (212) 555-0188 to
verify.""",
    "street named after a person": """Our new clinic opens at 42 Jane Roe Lane on May 1 with
diabetes education classes every Tuesday.""",
    "patient portal announcement": """Our patient portal has a new look. Log in at
https://portal.example.org/login to see lab results, request refills of your blood pressure
medicines, or message your care team about diabetes or asthma questions.""",
    "vendor pitch about the reader's patients": """Hi Jane,

Our remote monitoring program helps your patients with heart failure and COPD stay out of the
hospital. Can we book 20 minutes next week?""",
    "vendor dunning a clinic contact": """Karen Miller's customer account 88812345 shows invoice
INV-2291 for insulin pen needles is 30 days past due.""",
}

PHI = {
    "referral naming the patient in running text": """Hi Dr. Patel,

Can you see Robert Chen next week? 58 y/o with poorly controlled diabetes, A1c 10.2, on
metformin 1000 mg BID and glipizide. He's been getting foot numbness.

Thanks, Linda""",
    "labelled patient with a DOB": """Patient: Okafor, Chidi
DOB 4/12/1979
Reason for visit: asthma exacerbation""",
    "patient list with record numbers": """The attached list is for tomorrow's infusion chair.

Name,MRN,Drug
Tanaka Hiro,4481220,infliximab
Nguyen Lan,4482951,rituximab""",
    "letter to the patient about their own results": """Dear Mrs. Alvarez,

Your biopsy results are back and show no cancer. Please continue your tamoxifen and keep your
follow-up visit with Dr. Stein on June 3.

Westside Oncology""",
    "account and card of a named person": """FYI - Daniel Brooks' account 7730012 is past due
$340; he said his insurance denied the MRI. Card on file 4111 1111 1111 1111.""",
    "SSN correction": "Please update SSN for Kevin Walsh: 219-09-9998 should be 219-09-9997.",
    "medication list for a titled patient": """Med rec for Mr. Thompson: lisinopril 20 mg
daily, atorvastatin 40 mg nightly, stopped aspirin after the GI bleed.""",
    "record number in brackets after the name": """Re: Ana Lima (00293811)

Discharged home today after treatment for pneumonia.""",
    "split name columns with birth dates": """Last Name,First Name,DOB,Phone
Kowalski,Piotr,1960-02-14,(414) 555-2231
Schmidt,Anna,1972-11-30,(414) 555-9012""",
    "patient column with phone numbers only": """Patient\tPhone
Valerie Paul\t(510) 836-2205
JOSEPH MARTINEZ\t(216) 222-5550""",
    "name and date of birth in a work list": """Outreach today:
1. Hart, Brian (07/31/63) - COPD, last FEV1 45%
2. Michele Brown (28-AUG-1974) - lupus""",
    "portal access by a named patient": """Security alert: the patient portal account for
PETERSON, JOSEPH (jpeterson@mail.example) was accessed from 198.51.100.192 after five failed
logins.""",
}


@pytest.mark.parametrize("name", sorted(NOT_PHI))
def test_not_phi(engine, name):
    a = _analyse(engine, NOT_PHI[name])
    assert not a.phi, (name, a.reasons, [(h.detector, h.value) for h in a.hits])


@pytest.mark.parametrize("name", sorted(PHI))
def test_phi(engine, name):
    a = _analyse(engine, PHI[name])
    assert a.phi, (name, [(h.detector, h.category, h.value) for h in a.hits])


def test_subject_name_with_body_condition(engine):
    a = _analyse(engine, "She called back, the rash is worse.",
                 subject="Maria Gonzalez - psoriasis")
    assert a.phi and "person_with_health_or_identifier" in a.reasons


def test_sender_and_clinician_recipients_are_not_patients(engine):
    body = "Jesse Curry and Ebony Jones discussed the sepsis protocol with the ICU team."
    headers = {"from": "Jesse Curry", "to": "Ebony Jones, DO"}
    assert not _analyse(engine, body, headers=headers).phi
    # the same names, not correspondents, are patients
    assert _analyse(engine, body).phi


def test_display_names_in_headers_are_never_hits(engine):
    a = _analyse(engine, "See attached.", headers={"to": "Jane Roe"})
    assert not [h for h in a.hits if h.type == "name"]


def test_alternative_parts_are_scanned_once(engine):
    text = "Patient: Jane Testperson\nSSN 123-45-6780"
    a = engine.analyse([Chunk("body[0] text/plain", "body", text),
                        Chunk("body[1] text/html", "body", text.replace("\n", "\r\n") + " ")])
    assert a.phi and {h.where for h in a.hits} == {"body[0] text/plain"}


def test_addressee_name_is_reported_only_when_the_letter_is_about_their_health(engine):
    a = _analyse(engine, "Dear Mr. Perry,\n\nBecause of your asthma, please bring your inhaler.")
    assert a.phi and [h.type for h in a.hits if h.detector == "addressee"] == ["name"]
    a = _analyse(engine, "Hi Megan,\n\nFor a limited time, get 20% off exam room supplies.")
    assert not a.phi and not [h for h in a.hits if h.type == "name"]


# --------------------------------------------------------------------------- names

@pytest.mark.parametrize("text,name", [
    ("Quick handoff on Richard Barker in room 29", "Richard Barker"),
    ("Smith, Brianna M. - pneumonia", "Smith, Brianna M."),
    ("LARRY ANDERSON called", "LARRY ANDERSON"),
    ("Ms. Michelle Obrien called", "Ms. Michelle Obrien"),
    ("Morning Richard Barker", "Richard Barker"),
    ("Hawkins\tAmber\tamber@example.net", "Hawkins\tAmber"),
    ("Hawkins|Amber|amber@example.net", "Hawkins|Amber"),
    ("HAWKINS | AMBER | 03/04/1971", "HAWKINS | AMBER"),
])
def test_name_span(text, name):
    span = builtin._name_span(text)
    assert span is not None and text[span[0]:span[1]] == name


@pytest.mark.parametrize("before,text,after,ok", [
    ("", "Richard Barker", " was admitted", True),
    ("Thanks,\n", "Jane Roe", "\nBilling", False),  # signature
    ("Dr. ", "Jane Roe", "", False),
    ("", "Jane Roe", ", MD", False),
    ("", "Jane Roe", ", D.O.B. 01/02/1960", True),  # not a credential
    ("Prescriber: ", "Jane Roe", "", False),
    ("reviewed by ", "Jane Roe", "", False),
    ("our study coordinator, ", "Angela Martin", ", at", False),
    ("", "Monica Geller", ", Diabetes Educator", False),
    ("On Monday, ", "Pam Beesly", " <pam@example.org> wrote:", False),
    ("Dear ", "Jane Roe", ",", False),  # an addressee, not a mention
    ("Our clinic at 42 ", "Jane Roe", " Lane", False),
    ("", "Ross, Grant", " and Wolfe LLC", False),
    ("Emergency contact: ", "Misty Lewis", " (daughter)", True),
])
def test_mention_context(before, text, after, ok):
    assert builtin._mention(before, text, after) is ok


@pytest.mark.parametrize("text,ok", [
    ("Patient: Jane Testperson", True), ("PatientName: BOOKER, JENNIFER", True),
    ("pt John Miller", True), ("Patient: Portal Access", False),
    ("Patient Experience Week", False), ("Patient: Dr. Jane Roe", False),
])
def test_labelled_patient(text, ok):
    assert builtin._labelled("", text, "") is ok


@pytest.mark.parametrize("text,after,ok", [
    ("Dear Mr. Smith", ",", True), ("Hi Jane Roe", ",", True), ("Jane, your", " visit", True),
    ("Dear Dr. Smith", ",", False), ("Dear Team", ",", False), ("Hi Jane Roe", ", MD", False),
])
def test_addressee(text, after, ok):
    assert builtin._addressee("", text, after) is ok


def test_name_tokens_ignore_titles_credentials_and_initials():
    assert name_tokens("Ms. Jane Q. Roe, MD") == {"jane", "roe"}
    assert name_tokens("ROE, JANE") == {"roe", "jane"}


# --------------------------------------------------------------------------- tables

def _labels(text: str, needle: str) -> tuple[str, ...]:
    data = text.encode()
    return _Tables(data).labels(data.index(needle.encode()))


def test_column_header_of_csv_tsv_and_html_tables():
    assert _labels("Patient,DOB,Phone\nJane Roe,03/04/1971,x", "03/04") == (" dob ",)
    assert _labels('Name,SSN\n"Roe, Jane",123456780', "1234") == (" ssn ",)
    html = "DOB\tMRN\tPatient\n\nAug 5 1968\t2136322\tRonald Barnes"
    assert _labels(html, "Ronald") == (" patient ",)


def test_row_label_and_spreadsheet_cells():
    assert _labels("Date of Birth\t03/04/1971", "03/04") == (" date of birth ",)
    assert _labels("PatientName: Booker, Jennifer\tZip: 06014", "060") == (" zip ",)
    assert normalise_label("PatientName") == " patient name "


def test_pipe_table_with_last_and_first_columns_names_a_patient(engine):
    text = ("Last|First|DOB|Phone\nRoe|Jane|03/04/1971|617-253-1000\n"
            "Smith|Brianna|10/25/1955|617-253-1001")
    people = [h.value for h in _analyse(engine, text).hits if h.category == PERSON]
    assert people == ["Roe|Jane", "Smith|Brianna"]
    md = "| Last | First | MRN |\n|------|------|-----|\n| ROE | JANE | 00123456 |"
    assert [h.value for h in _analyse(engine, md).hits if h.category == PERSON] == [
        "ROE | JANE"]
    # the same table without the name columns: mentions at most, not labelled patients
    other = "Site|Lead|Shift\nNorth|Jane Roe|Day\nSouth|Brianna Smith|Night"
    assert not [h for h in _analyse(engine, other).hits if h.category == PERSON]


def test_prose_is_not_a_table():
    # "Dear Mr. Murphy," is not the header of a column (only the "Re:" label counts)
    text = "Dear Mr. Murphy,\nRe: claim 4859643876, insured vehicle"
    assert _labels(text, "4859") == (" re ",)
    assert _labels("Thanks, see you soon\nCall me, 5551234, anytime", "5551") == ()


# --------------------------------------------------------------------------- clinical

@pytest.mark.parametrize("text,dose", [
    ("Biktarvy 1 tablet daily", "1 tablet daily"),
    ("take 2 capsules twice daily with food", "2 capsules twice daily"),
    ("latanoprost 1 drop nightly", "1 drop nightly"),
    ("albuterol 2 puffs q4-6h PRN", "2 puffs q4-6h"),
    ("500 mg of caffeine per cup", None),
    ("30 tablets per bottle, 12 bottles per case", None),
])
def test_dose_units_include_tablets_capsules_and_drops(engine, text, dose):
    doses = [h.value for h in _analyse(engine, text).hits if h.detector == "dose"]
    assert doses == ([dose] if dose else [])


# --------------------------------------------------------------------------- decision

def _hit(category: str, type_: str, start: int, where: str = "body", kind: str = "body",
         strong: bool = False) -> Hit:
    return Hit("t", type_, category, where, start, start + 4, 1.0, strong, "xxxx", kind)


def test_decision_rules():
    assert decide([_hit(IDENTIFIER, "ssn", 0, strong=True)]).reasons == ("strong_identifier",)
    # a mention near health information; far away it is not tied to it
    assert decide([_hit(NAME, "name", 0), _hit(CLINICAL, "diagnosis", 100)]).phi
    assert not decide([_hit(NAME, "name", 0), _hit(CLINICAL, "diagnosis", 5000)]).phi
    # a name in the subject is about the whole message
    assert decide([_hit(NAME, "name", 0, "subject", "subject"),
                   _hit(CLINICAL, "diagnosis", 5000)]).phi
    # a business card: a name with a phone number
    assert not decide([_hit(NAME, "name", 0), _hit("contact", "phone", 20)]).phi
    # a labelled patient with a phone number
    assert decide([_hit(PERSON, "name", 0), _hit("contact", "phone", 20)]).phi
    # "your" right before the condition, in a letter to a named person
    letter = [_hit(CONTEXT, ADDRESSEE, 0), _hit(CONTEXT, SECOND_PERSON, 50),
              _hit(CLINICAL, "diagnosis", 60)]
    assert decide(letter).reasons == ("addressee_with_own_health",)
    assert not decide([*letter, _hit(CONTEXT, "bulk_mail", 900)]).phi
    assert not decide([_hit(CLINICAL, "diagnosis", 0), _hit("provider", "npi", 10)]).phi
    # an identifier right beside patient words is the patient's; further off it is not, and a
    # link or an IP (found only beside patient words) does not count by itself
    assert decide([_hit(CONTEXT, "patient_context", 0), _hit(IDENTIFIER, "vehicle", 30)]
                  ).reasons == ("identifier_in_patient_context",)
    assert not decide([_hit(CONTEXT, "patient_context", 0), _hit(IDENTIFIER, "vehicle", 600)]).phi
    assert not decide([_hit(CONTEXT, "patient_context", 0), _hit(IDENTIFIER, "url", 30)]).phi
    assert not decide([_hit(CONTEXT, "patient_context", 0), _hit("contact", "phone", 30)]).phi


# --------------------------------------------------------------------------- Safe Harbor in notes
# Each detector below is phrased independently of any benchmark's notes (synthetic values).

def _found(engine, text: str, detector: str) -> list[str]:
    return [h.value.strip().rstrip(".") for h in _analyse(engine, text).hits
            if h.detector == detector]


@pytest.mark.parametrize("text,detector,value", [
    ("Pt was admitted 02/07/2025 with cellulitis.", "encounter-date", "02/07/2025"),
    ("She was seen on the twenty-first of May in clinic.", "encounter-date",
     "the twenty-first of May"),
    ("discharged home on Jan. 9th, 2025", "encounter-date", "Jan. 9th, 2025"),
    ("DOS: 2025-01-09, CPT 99213", "encounter-date", "2025-01-09"),
    ("underwent lap chole 4/2/2024", "encounter-date", "4/2/2024"),
    ("a 96-year-old man with CHF", "age-over-89", "96-year-old"),
    ("Age: 102", "age-over-89", "Age: 102"),
    ("participant ID PX-40117 withdrew", "participant-code", "participant ID PX-40117"),
    ("parked his truck, plate 4KLM227, in bay 3", "vehicle-plate", "plate 4KLM227"),
    ("fingerprint template FT-20931 on file", "biometric-id", "fingerprint template FT-20931"),
    ("clinical photo saved as rle_wound_0412.png", "photo-file", "rle_wound_0412.png"),
    ("labs at https://ehr.example.org/patients/55321/labs", "url-patient-record",
     "https://ehr.example.org/patients/55321"),
    ("the glucose monitor syncs to https://sync.example.com/u/kroe", "url-personal",
     "https://sync.example.com/u/kroe"),
    ("her member ID is ZXQ-55-10293", "member-id", "member ID is ZXQ-55-10293"),
    ("Device: home glucose monitor, serial GX-118-4420K", "device-serial",
     "serial GX-118-4420K"),
    ("The patient lives in Stanislaus County.", "county", "County"),
    ("pt relocated to Modesto last year", "place-of-residence", "relocated to Modesto"),
    ("The patient is from the city of Turlock.", "city-of", "city of Turlock"),
    ("1 Oak Ave, Modesto, CA 95354", "city-state-zip", "Modesto, CA 95354"),
    ("patient's ZIP code on file is 95354", "zip-phrase", "ZIP code on file is 95354"),
    ("Handoff: Priya Castellano-Nunez was seen today.", "hyphenated-name",
     "Priya Castellano-Nunez"),
    ("Referral for patient Moreno-Castillo re: knee", "patient-hyphenated",
     "patient Moreno-Castillo"),
    ("Pt prefers to be called \"Bitsy\" by staff", "nickname", "prefers to be called \"Bitsy"),
])
def test_safe_harbor_detectors_find_values_in_notes(engine, text, detector, value):
    assert any(value in found for found in _found(engine, text, detector))


@pytest.mark.parametrize("text,detector", [
    ("Budget review moved to 02/07/2025.", "encounter-date"),
    ("We admitted 3 new vendors; meeting 02/07/2025", "encounter-date"),
    ("patients aged 90 and over: 14%", "age-over-89"),
    ("ages 90-99 made up 3% of the registry", "age-over-89"),
    ("a 67-year-old woman", "age-over-89"),
    ("trial registry NCT number in the subject line", "participant-code"),
    ("culture plate 5A1234 read at 48 h", "vehicle-plate"),
    ("staff photo: picnic_2025.jpg", "photo-file"),
    ("Log in to the patient portal at https://portal.example.org/login", "url-patient-record"),
    ("patient education: https://example.org/patient-education/asthma", "url-patient-record"),
    ("patient portal: https://portal.example.org/u/", "url-personal"),
    ("Stanislaus County fair opens Friday", "county"),
    ("The patient was referred to City of Hope", "city-of"),
    ("the patient lives at Sunrise Senior Living", "place-of-residence"),
    ("Springfieldia, NY 10001", "city-state-zip"),
    ("Dr. Priya Castellano-Nunez will present", "hyphenated-name"),
    ("Thanks,\nPriya Castellano-Nunez", "hyphenated-name"),
    ("Priya Castellano-Nunez, MD", "hyphenated-name"),
    ("Please Follow-Up with the vendor", "hyphenated-name"),
    ("patient Follow-Up clinic", "patient-hyphenated"),
    ("Patient Check-In desk", "patient-hyphenated"),
    ("our new intern goes by Bud", "nickname"),
])
def test_safe_harbor_detectors_ignore_near_misses(engine, text, detector):
    assert _found(engine, text, detector) == []


NOTES_PHI = {
    "hyphenated name with an encounter date": """Progress note: Priya Castellano-Nunez was seen
on 02/07/2025. Call back at the number on file.""",
    "labelled hyphenated surname and the same name unhyphenated": """Consult requested for
patient Moreno-Castillo, listed as Moreno Castillo on the old intake form.""",
    "age over 89 with a diagnosis": """The patient is a 93-year-old man presenting with
syncope and atrial fibrillation.""",
    "nickname next to a participant code": """Subject ID KT-0932 is enrolled. The patient
prefers to be called 'Bitsy' at visits.""",
    "link to one patient's record": """Results are posted at
https://ehr.example.org/patients/55321/labs for review.""",
    "plan member id after 'is'": "The health plan member ID is ZXQ-55-10293.",
    "a patient's vehicle identifiers": """The patient drove himself in; his car, plate 5TRW884,
is in visitor parking.""",
    "an encounter timeline": """Course: admitted 04/12/2025, taken to theatre 04/13/2025, and
discharged home 04/16/2025.""",
}

NOTES_NOT_PHI = {
    "population figures with an age band": """Registry update: patients aged 90 and over are 4%
of admissions; 1,204 were discharged 01/02/2025 through 03/31/2025 after pneumonia.""",
    "facilities notice with a plate": """Facilities: the car with plate 7ABC123 parked in the
north lot will be towed Friday. Questions to Sam Ruiz-Hale, Facilities Manager.""",
    "staff photo for the newsletter": """Newsletter: please send Maria Castellano-Nunez your team
photo (team_photo.jpg) by Friday.""",
    "vendor address in a signature": """Thanks,
Jordan Ellis
Account Manager, Valley Supply
120 Main St, Modesto, CA 95354""",
    "conference in a county": """The Stanislaus County health fair is on 05/03/2025. Our
patients can get flu shots there.""",
    "patients told where to call and park": """Patients can call (555) 201-3344 to book, and
park in the garage at 400 Oak Street, Springfield, IL 62701.""",
}


@pytest.mark.parametrize("name", sorted(NOTES_PHI))
def test_note_phrasings_are_phi(engine, name):
    a = _analyse(engine, NOTES_PHI[name])
    assert a.phi, (name, [(h.detector, h.category) for h in a.hits])


@pytest.mark.parametrize("name", sorted(NOTES_NOT_PHI))
def test_note_like_near_misses_are_not_phi(engine, name):
    a = _analyse(engine, NOTES_NOT_PHI[name])
    assert not a.phi, (name, a.reasons, [(h.detector, h.category) for h in a.hits])
